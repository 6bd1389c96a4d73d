"""Which digits_jax files and functions a training step's code runs
through: the program built and traced (lowered) for configs/fast.py, in the
tree of the current directory."""
import os, runpy, sys
sys.path.insert(0, os.getcwd())
import jax, numpy as np
from digits_jax import members as members_lib, parallel, platform as platform_lib, train, recipe
config = runpy.run_path('configs/fast.py')['get_config']()
config, members = members_lib.resolve(config)
platform = platform_lib.current(config.conv_impl)
seen = set()
root = os.path.join(os.getcwd(), 'digits_jax')
def tracer(frame, event, arg):
  if event == 'call' and frame.f_code.co_filename.startswith(root):
    seen.add((os.path.relpath(frame.f_code.co_filename, os.getcwd()), frame.f_code.co_qualname))
  return None
data = {'image_shape': [28, 28, 1], 'num_classes': 10, 'pixel_mean': 33.3, 'pixel_std': 78.6}
sys.setprofile(tracer)
devices = parallel.create(config, 1)
init_key, shuffle_key, train_key = members.keys()
if hasattr(train, 'build_program'):
  program = train.build_program(config, members, devices, platform, data, 100)
  update, state = program.update, program.init_state(members, init_key)
else:
  model, tx = recipe.build(config, platform, total_steps=100, traced_keys=members.traced_keys)
  preprocess = recipe.preprocessing(config, data)
  update = train.train_program(config, model, tx, preprocess, members, devices, platform, 100)
  state = members.create_train_state(model, tx, init_key, config.input_size)
batches = members.epoch_batches(shuffle_key, 0, 1024, config.batch_size)[:1]
update.lower(devices.place_state(state), np.zeros((1024, 28, 28), np.uint8), np.zeros(1024, np.int32), devices.shard_batch_indices(batches), train_key)
sys.setprofile(None)
files = sorted({f for f, _ in seen})
print(len(files), 'files,', len(seen), 'functions')
for f in files:
  print(' ', f, ', '.join(sorted(q for g, q in seen if g == f)))
