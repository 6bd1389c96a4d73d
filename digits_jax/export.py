"""`--mode=export`: the best checkpoint's inference as a `jax.export` artifact.

The artifact is serialized StableHLO with the weights inside: uint8 digits
[N, H, W] in (N symbolic; MNIST's 28x28), class probabilities [N, C] out,
padding and standardization included. It runs with a plain `jax` install,
no digits_jax:

  import jax, numpy as np
  with open('digits.jax', 'rb') as f:
    predict = jax.export.deserialize(bytearray(f.read()))
  probabilities = predict.call(np.zeros((3, 28, 28), np.uint8))

It is lowered for every platform in `PLATFORMS` that this jaxlib can lower
for without the hardware, so that one file serves on CPU, GPU and TPU.
"""

import logging
import sys

import jax
import jax.numpy as jnp

from digits_jax import paths
from digits_jax import recipe
from digits_jax.errors import UserError

log = logging.getLogger(__name__)

PLATFORMS = ('cpu', 'cuda', 'tpu')


def inference_function(restored):
  """uint8 [N, H, W] -> probabilities [N, C], the weights as constants.

  An ensemble's are the mean of its members' probabilities, the members
  one after another (a vmapped form would run grouped convolutions, slow on
  the CPU: see platform.py).
  """
  variables = restored.state.inference_variables()
  model, preprocess = restored.model, restored.preprocess
  members = restored.members.unstack(variables)

  def probabilities(digits):
    x = preprocess(digits)
    member_probabilities = [
        jax.nn.softmax(model.apply_eval(v, x), axis=-1) for v in members]
    return sum(member_probabilities) / len(members)

  return probabilities


def export_inference(restored, platforms=PLATFORMS) -> tuple[bytes, tuple]:
  """The serialized artifact and the platforms it was lowered for (those of
  `platforms` this jaxlib lowers for; at least 'cpu')."""
  batch, = jax.export.symbolic_shape('n')
  height, width, _ = recipe.data_record(restored.meta)['image_shape']
  spec = jax.ShapeDtypeStruct((batch, height, width), jnp.uint8)
  function = jax.jit(inference_function(restored))
  lowered_for = []
  for platform in platforms:
    try:
      jax.export.export(function, platforms=[platform])(spec)
      lowered_for.append(platform)
    except Exception as e:  # pylint: disable=broad-exception-caught
      log.warning('Not exporting for %s: %s', platform,
                  str(e).splitlines()[0] if str(e) else type(e).__name__)
  exported = jax.export.export(function, platforms=lowered_for)(spec)
  return exported.serialize(), tuple(lowered_for)


def export_checkpoint(config, members, workdir, output: str, platform,
                      member: str = '') -> str:
  """Writes the best checkpoint of `workdir` to `output` (all its members,
  or one: `member`, as restore_best's); returns where."""
  from digits_jax import restore  # pylint: disable=g-import-not-at-top
  if not output:
    raise UserError('--mode=export needs --output=PATH (e.g. digits.jax)')
  if output == paths.STANDARD_OUTPUT and sys.stdout.isatty():
    raise UserError('--output=- writes the binary artifact to standard '
                    'output, which is a terminal here; redirect it '
                    '(> digits.jax) or pipe it')
  restored = restore.restore_best(config, members, workdir, platform,
                                  member)
  serialized, platforms = export_inference(restored)
  path = paths.write_output(output, bytes(serialized), create_parents=True)
  log.info('Exported the checkpoint at step %d (epoch %s) to %s: uint8 '
           '[N, 28, 28] digits -> probabilities [N, 10], for %s.',
           restored.step, restored.meta.get('epoch'), path,
           ', '.join(platforms))
  return str(path)
