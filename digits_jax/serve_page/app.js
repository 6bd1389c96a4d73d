// The draw-a-digit page: strokes on a canvas (mouse, pen or finger through
// pointer events), or an image file, POSTed to /predict; the answer shown as
// the digit, a bar per class and the 28x28 image the model saw. No library
// and no network fetch but this server's /predict.
'use strict';

const pad = document.getElementById('pad');
const ink = pad.getContext('2d');
const seen = document.getElementById('seen').getContext('2d');
const statusLine = document.getElementById('status');
const digitText = document.getElementById('digit');
const probabilityText = document.getElementById('probability');
const agreementText = document.getElementById('agreement');
const bars = document.getElementById('bars');
const dropZone = document.getElementById('drop-zone');

// Strokes about as thick, relative to the digit, as MNIST's pen.
const STROKE_WIDTH = 18;
// After the pen lifts, wait this long for another stroke before predicting.
const DEBOUNCE_MS = 250;

let drawing = null;  // The pointer id drawing now, if any.
let last = null;
let pending = null;  // The debounce timer.
let latest = 0;  // Only the newest request's answer is shown.
let requests = 0;

function clearPad() {
  ink.fillStyle = '#fff';
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = '#000';
  ink.fillStyle = '#000';
  ink.lineWidth = STROKE_WIDTH;
  ink.lineCap = 'round';
  ink.lineJoin = 'round';
}

function showState(state, message) {
  statusLine.dataset.state = state;
  statusLine.textContent = message;
}

function resetResult() {
  latest += 1;  // Answers still on their way are now stale.
  digitText.textContent = '?';
  probabilityText.textContent = '';
  agreementText.textContent = '';
  bars.replaceChildren();
  seen.clearRect(0, 0, 28, 28);
  showState('idle', 'Waiting for a digit.');
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener('pointerdown', (event) => {
  if (drawing !== null) return;
  event.preventDefault();
  drawing = event.pointerId;
  pad.setPointerCapture(event.pointerId);
  clearTimeout(pending);
  last = point(event);
  ink.beginPath();  // A dot, for a tap that does not move.
  ink.arc(last[0], last[1], STROKE_WIDTH / 2, 0, 2 * Math.PI);
  ink.fill();
});

pad.addEventListener('pointermove', (event) => {
  if (event.pointerId !== drawing) return;
  // Coalesced events: every sample a fast pen or finger produced.
  const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const sample of (samples.length ? samples : [event])) {
    const next = point(sample);
    ink.beginPath();
    ink.moveTo(last[0], last[1]);
    ink.lineTo(next[0], next[1]);
    ink.stroke();
    last = next;
  }
});

function endStroke(event) {
  if (event.pointerId !== drawing) return;
  drawing = null;
  clearTimeout(pending);
  pending = setTimeout(predictPad, DEBOUNCE_MS);
}
pad.addEventListener('pointerup', endStroke);
pad.addEventListener('pointercancel', endStroke);

document.getElementById('clear').addEventListener('click', () => {
  clearTimeout(pending);
  clearPad();
  resetResult();
});

function predictPad() {
  // A file chosen while the drawing is being encoded is the newer request.
  const before = latest;
  pad.toBlob((blob) => {
    if (latest === before) predict(blob, 'the drawing');
  }, 'image/png');
}

function predictFile(file) {
  clearTimeout(pending);  // A drawing's prediction still waiting gives way.
  predict(file, file.name);
}

document.getElementById('file').addEventListener('change', (event) => {
  const file = event.target.files[0];
  if (file) predictFile(file);
  event.target.value = '';  // The same file again is a new choice.
});

for (const type of ['dragenter', 'dragover']) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.add('dragging');
  });
}
dropZone.addEventListener('dragleave', () => {
  dropZone.classList.remove('dragging');
});
dropZone.addEventListener('drop', (event) => {
  event.preventDefault();
  dropZone.classList.remove('dragging');
  const file = event.dataTransfer.files[0];
  if (file) predictFile(file);
});

async function predict(body, name) {
  const ticket = ++latest;
  requests += 1;
  statusLine.dataset.requests = String(requests);
  showState('pending', `Predicting ${name}…`);
  let answer;
  try {
    // The file's own type where the browser knows it; the server reads the
    // format from the bytes either way.
    const response = await fetch('/predict', {
      method: 'POST',
      headers: {'Content-Type': body.type || 'application/octet-stream'},
      body,
    });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
  } catch (error) {
    if (ticket === latest) showState('error', `${name}: ${error.message}`);
    return;
  }
  if (ticket !== latest) return;  // A newer drawing or file is on its way.
  showResult(answer, name);
}

function showResult(answer, name) {
  digitText.textContent = String(answer.digit);
  probabilityText.textContent =
      `p = ${(100 * answer.probability).toFixed(1)}%`;
  agreementText.textContent = answer.num_models > 1
      ? `${answer.members_agreeing} of ${answer.num_models} members agree`
      : '';
  bars.replaceChildren(...answer.probabilities.map((p, digit) => {
    const row = document.createElement('li');
    if (digit === answer.digit) row.classList.add('top');
    const label = document.createElement('span');
    label.textContent = String(digit);
    const track = document.createElement('span');
    track.className = 'track';
    const fill = document.createElement('span');
    fill.className = 'fill';
    fill.style.display = 'block';
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement('span');
    value.textContent = `${(100 * p).toFixed(1)}%`;
    row.append(label, track, value);
    return row;
  }));
  const pixels = seen.createImageData(28, 28);
  answer.input.flat().forEach((v, i) => {
    pixels.data.set([v, v, v, 255], 4 * i);
  });
  seen.putImageData(pixels, 0, 0);
  showState('done', `${name}: ${answer.digit}`);
}

clearPad();
resetResult();
