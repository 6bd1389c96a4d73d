"""What users feed --mode=predict and --output: phone photos stored
sideways, 16-bit and float scans, folders with nothing to read, misnamed
arrays, standard output and device files. No model: what predict reads and
writes (tests/test_predict.py predicts such files with a trained one)."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from digits_jax import digit_image
from digits_jax import input_pipeline
from digits_jax import paths
from digits_jax import predict
from digits_jax.errors import UserError

# EXIF's Orientation tag; 6: the stored picture is turned 90 degrees
# counter-clockwise, to be shown turned 90 degrees clockwise (a phone held
# upright).
ORIENTATION = 0x0112


@pytest.fixture(scope='module')
def seven(mnist_data_dir):
  """A real test digit (the first 7) drawn dark on light, 8x larger: the
  page a user photographs or scans, as 8-bit gray."""
  builder = input_pipeline.prepare_mnist(mnist_data_dir, try_download=False)
  digits, labels = input_pipeline._read_split(builder, 'test', 50)  # pylint: disable=protected-access
  digit = digits[list(labels).index(7)]
  page = 255 - np.asarray(Image.fromarray(digit).resize((224, 224),
                                                        Image.BILINEAR))
  return page.astype(np.uint8)


def _read(path) -> np.ndarray:
  return predict.read_image(str(path)).astype(np.float64)


def _same_digit(a, b) -> bool:
  return np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97


def test_a_photo_stored_sideways_is_read_upright(seven, tmp_path):
  Image.fromarray(seven).save(tmp_path / 'upright.jpg', quality=95)
  sideways = Image.fromarray(seven).transpose(Image.Transpose.ROTATE_90)
  exif = Image.Exif()
  exif[ORIENTATION] = 6
  sideways.save(tmp_path / 'portrait.jpg', quality=95, exif=exif)
  sideways.save(tmp_path / 'untagged.jpg', quality=95)
  upright = _read(tmp_path / 'upright.jpg')
  assert _same_digit(_read(tmp_path / 'portrait.jpg'), upright)
  # The tag is what turns it: the same pixels untagged stay sideways.
  assert not _same_digit(_read(tmp_path / 'untagged.jpg'), upright)


@pytest.mark.parametrize('orientation,stored_as', [
    (3, Image.Transpose.ROTATE_180), (8, Image.Transpose.ROTATE_270),
    (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_every_exif_orientation_is_undone(seven, tmp_path, orientation,
                                          stored_as):
  exif = Image.Exif()
  exif[ORIENTATION] = orientation
  Image.fromarray(seven).transpose(stored_as).save(tmp_path / 'd.jpg',
                                                   quality=95, exif=exif)
  Image.fromarray(seven).save(tmp_path / 'upright.jpg', quality=95)
  assert _same_digit(_read(tmp_path / 'd.jpg'), _read(tmp_path / 'upright.jpg'))


def _sixteen_bit(page: np.ndarray) -> np.ndarray:
  return page.astype(np.uint16) * 257  # 0..255 -> 0..65535.


@pytest.mark.parametrize('name,make', [
    ('gray16.png', lambda p: Image.fromarray(_sixteen_bit(p))),
    ('gray16.tif', lambda p: Image.fromarray(_sixteen_bit(p))),
    ('int32.tif', lambda p: Image.fromarray(
        _sixteen_bit(p).astype(np.int32))),
    ('float01.tif', lambda p: Image.fromarray(
        (p / 255.0).astype(np.float32))),
    ('float255.tif', lambda p: Image.fromarray(p.astype(np.float32))),
])
def test_wide_and_float_images_are_scaled_as_their_mode_says(seven, tmp_path,
                                                             name, make):
  Image.fromarray(seven).save(tmp_path / 'gray8.png')
  make(seven).save(tmp_path / name)
  assert _same_digit(_read(tmp_path / name), _read(tmp_path / 'gray8.png'))


def test_as_8bit_maps_each_modes_full_scale_to_255():
  as_8bit = lambda a, mode: np.asarray(
      digit_image.as_8bit(Image.fromarray(a)))  # `mode`: the one it gets.
  wide = np.array([[0, 257 * 128, 65535]], np.uint16)
  np.testing.assert_array_equal(as_8bit(wide, 'I;16'), [[0, 128, 255]])
  floats = np.array([[0.0, 0.5, 1.0]], np.float32)  # 1.0 is white.
  np.testing.assert_array_equal(as_8bit(floats, 'F'), [[0, 128, 255]])
  np.testing.assert_array_equal(
      as_8bit(np.array([[0.0, 128.0, 255.0]], np.float32), 'F'),
      [[0, 128, 255]])
  np.testing.assert_array_equal(  # Floats past 255: from 0 to their max.
      as_8bit(np.array([[0.0, 500.0, 1000.0]], np.float32), 'F'),
      [[0, 128, 255]])
  np.testing.assert_array_equal(
      as_8bit(np.array([[0, 128, 255]], np.int32), 'I'), [[0, 128, 255]])
  eight = Image.fromarray(np.array([[7]], np.uint8))
  assert digit_image.as_8bit(eight) is eight


def test_float_npy_digits_in_0_1_reach_255_at_their_upper_bound(tmp_path):
  digits = np.zeros((2, 28, 28), np.float32)
  digits[:, 10:18, 12:16] = 1.0
  digits[1, 0, 0] = 0.5
  np.save(tmp_path / 'floats.npy', digits)
  read, errors = predict.load_images([str(tmp_path / 'floats.npy')])
  assert not errors
  assert read[0][1].dtype == np.uint8
  assert read[0][1].max() == 255 and read[1][1][0, 0] == 128
  # Values already on 0..255 are kept, not multiplied again.
  np.save(tmp_path / 'bytes.npy', digits * 255)
  (_, digit), = predict.load_images([str(tmp_path / 'bytes.npy')])[0][:1]
  assert digit.max() == 255


def test_a_folder_with_nothing_to_read_is_an_error_naming_what_it_holds(
    tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  other = tmp_path / 'other'
  (other / 'scans').mkdir(parents=True)
  Image.new('L', (28, 28)).save(other / 'scans' / 'a.png')
  for name in ('notes.txt', 'page.pdf', 'IMG_0001.HEIC'):
    (other / name).write_bytes(b'x')
  digits, errors = predict.load_images([str(empty), str(other)])
  assert not digits
  assert [name for name, _ in errors] == [str(empty), str(other)]
  assert 'it is empty' in errors[0][1]
  assert '.HEIC' in errors[1][1] and '1 subfolder' in errors[1][1]


def test_an_npz_under_an_npy_name_is_that_files_error_alone(tmp_path):
  np.savez(tmp_path / 'archive.npz', digits=np.zeros((2, 28, 28), np.uint8))
  os.rename(tmp_path / 'archive.npz', tmp_path / 'digits.npy')
  np.save(tmp_path / 'good.npy', np.zeros((3, 28, 28), np.uint8))
  np.save(tmp_path / 'words.npy', np.array(['a', 'b']))
  digits, errors = predict.load_images(
      [str(tmp_path / n) for n in ('digits.npy', 'good.npy', 'words.npy')])
  assert len(digits) == 3
  assert errors[0][0].endswith('digits.npy') and 'np.save' in errors[0][1]
  assert errors[1][0].endswith('words.npy') and '<U1' in errors[1][1]


def test_a_decoder_failing_in_an_unexpected_way_is_that_files_error_alone(
    tmp_path, monkeypatch, seven):
  Image.fromarray(seven).save(tmp_path / 'good.png')
  Image.fromarray(seven).save(tmp_path / 'odd.png')
  real = predict.read_image

  def read_image(path):
    if path.endswith('odd.png'):
      raise KeyError('a plugin broke')
    return real(path)

  monkeypatch.setattr(predict, 'read_image', read_image)
  digits, errors = predict.load_images([str(tmp_path / 'odd.png'),
                                        str(tmp_path / 'good.png')])
  assert len(digits) == 1
  assert errors == [(str(tmp_path / 'odd.png'),
                     "cannot read it (KeyError: 'a plugin broke')")]


# --------------------------------------------------------------------------
# --output: '-', device files, links.


def _write_in_a_process(output: str, data: str, stdout) -> int:
  """`paths.write_output(output, data)` after printing a line, in a process
  whose standard output is `stdout`."""
  code = ('import sys; from digits_jax import paths; print("before"); '
          f'paths.write_output({output!r}, {data!r})')
  return subprocess.run([sys.executable, '-c', code], stdout=stdout,
                        check=False, timeout=60).returncode


# Not /dev/stdout itself: were the code to rename over it, a test as root
# would replace the machine's link. A link of the test's own to it says the
# same (it is followed as /dev/stdout is), and /proc cannot be renamed over.
@pytest.mark.slow  # A Python process each.
@pytest.mark.parametrize('output', ['-', 'link to /dev/stdout',
                                    '/proc/self/fd/1'])
def test_standard_output_is_written_after_what_was_printed(tmp_path, output):
  if output == 'link to /dev/stdout':
    output = str(tmp_path / 'stdout')
    os.symlink('/dev/stdout', output)
  with open(tmp_path / 'out.txt', 'w') as stdout:
    assert _write_in_a_process(output, '{"a": 1}\n', stdout) == 0
  assert (tmp_path / 'out.txt').read_text() == 'before\n{"a": 1}\n'
  if output.startswith(str(tmp_path)):
    assert os.readlink(output) == '/dev/stdout'  # Not renamed over.


@pytest.mark.slow  # A Python process each.
def test_standard_output_through_a_pipe(tmp_path):
  os.symlink('/dev/stdout', tmp_path / 'stdout')
  for output in ('-', str(tmp_path / 'stdout')):
    result = subprocess.run(
        [sys.executable, '-c', 'from digits_jax import paths; '
         f'paths.write_output({output!r}, "x\\n")'],
        capture_output=True, text=True, check=False, timeout=60)
    assert (result.returncode, result.stdout) == (0, 'x\n'), result.stderr


def test_a_named_pipe_is_written_in_place(tmp_path):
  fifo = tmp_path / 'fifo'
  os.mkfifo(fifo)
  reader = subprocess.Popen(['cat', str(fifo)], stdout=subprocess.PIPE)
  paths.write_output(str(fifo), '{"b": 2}')
  assert reader.communicate(timeout=30)[0] == b'{"b": 2}'
  assert not any(n.endswith('.tmp') for n in os.listdir(tmp_path))


def test_a_link_to_a_file_stays_a_link(tmp_path):
  (tmp_path / 'real.json').write_text('old')
  os.symlink(tmp_path / 'real.json', tmp_path / 'link.json')
  paths.write_output(str(tmp_path / 'link.json'), 'new')
  assert os.path.islink(tmp_path / 'link.json')
  assert (tmp_path / 'real.json').read_text() == 'new'


def test_a_directory_as_output_is_one_line(tmp_path):
  with pytest.raises(UserError, match='is a directory'):
    paths.write_output(str(tmp_path), 'x')


def test_predict_output_dash_is_json_alone_on_stdout(monkeypatch, capsys,
                                                     tmp_path):
  """The per-image lines go to stderr, so the JSON parses."""
  np.save(tmp_path / 'd.npy', np.zeros((2, 28, 28), np.uint8))

  class Restored:
    pass

  from digits_jax import evaluation  # pylint: disable=g-import-not-at-top
  from digits_jax import restore  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(restore, 'restore_best', lambda *a, **k: Restored())
  logits = np.zeros((1, 2, 10), np.float32)
  logits[0, :, 3] = 5.0
  monkeypatch.setattr(evaluation, 'restored_logits', lambda *a: logits)
  failures = predict.predict_files(None, None, str(tmp_path),
                                   [str(tmp_path / 'd.npy'),
                                    str(tmp_path / 'missing.png')], '-', None)
  captured = capsys.readouterr()
  assert failures == 1
  result = json.loads(captured.out)
  assert [p['digit'] for p in result['predictions']] == [3, 3]
  assert result['errors'][0]['image'].endswith('missing.png')
  assert 'd.npy[0]: 3' in captured.err
