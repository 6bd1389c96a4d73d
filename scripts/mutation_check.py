"""Does the test suite notice when the recipe silently changes?

Applies one-line mutations, one at a time, to a scratch copy of the project
(the package, configs and tests), runs the tests that should catch each, and
prints which were caught and by which test. Rerun it after a refactor: a
mutation that survives is a part of the recipe no test holds.

  python scripts/mutation_check.py              # every mutation
  python scripts/mutation_check.py --only=l2_after_adam,evaluator_last_rows
  python scripts/mutation_check.py --list
  python scripts/mutation_check.py --quick      # by the quick tier alone

Real MNIST for the tests that need it is prepared once, offline, under
--data_dir (default: a folder in the system temp directory, kept between
runs). A mutation whose `old` text is no longer in the code is reported as
stale: update its entry here with the code.
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ('digits_jax', 'configs', 'tests', 'scripts', 'pyproject.toml')


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # Relative to the project root.
  edits: tuple  # (old, new) pairs; each `old` must occur exactly once.
  tests: tuple  # pytest node ids expected to catch it.
  why: str  # What a user would silently get.


def _m(name, path, old, new, tests, why):
  edits = ((old, new),) if isinstance(old, str) else tuple(zip(old, new))
  return Mutation(name, path, edits, tuple(tests), why)


OPT = 'tests/test_optim.py::'
AUG = 'tests/test_augment.py::'
TRAIN = 'tests/test_train.py::'
MODELS = 'tests/test_models.py::'
DATA = 'tests/test_input_pipeline.py::'
CKPT = 'tests/test_checkpoint.py::'
DIGIT_IMAGE = 'tests/test_digit_image.py::'
CONFIGS = 'tests/test_configs.py::test_improved_is_the_articles_recipe'
RECIPE_RESUME = (TRAIN + 'test_a_resume_with_another_recipe_is_refused_and_'
                 'writes_nothing')
DAMAGED_FILES = (CKPT + 'test_every_damaged_file_falls_back_to_the_newest_'
                 'good_checkpoint')

RECIPE = OPT + 'test_the_optimizer_chain_equals_a_hand_written_keras_recipe'
L2_LAYERS = OPT + 'test_l2_reaches_exactly_conv1_and_conv3_kernels_of_the_real_model'
PLATEAU = OPT + 'test_plateau_cuts_after_patience_epochs_without_improvement'
PLATEAU_DELTA = (OPT + 'test_plateau_ignores_improvements_below_min_delta_'
                 'and_respects_floor')
PLATEAU_CONFIG = OPT + 'test_report_epoch_applies_the_articles_plateau_constants'
ONECYCLE = OPT + 'test_onecycle_warms_up_to_the_peak_then_decays_to_the_floor'
AUG_ORDER = AUG + 'test_preprocess_augments_the_padded_image_before_standardizing'
AUG_PAD = AUG + 'test_preprocess_pads_then_standardizes_a_known_image'
AUG_RANGES = AUG + 'test_each_augmentation_parameter_alone_spans_its_range_on_both_sides'
AUG_ROTATION = AUG + 'test_rotation_by_90_degrees_counter_clockwise'
ELASTIC = AUG + 'test_the_elastic_field_is_smooth_centred_and_scaled_by_alpha'
STEP_RANDOMNESS = TRAIN + 'test_each_step_draws_its_randomness_from_fold_in_of_the_step'
EVAL_ORDER = TRAIN + 'test_evaluator_returns_the_logits_of_each_image_in_order'
REPORT = TRAIN + 'test_classification_report'
EPOCH_ORDER = TRAIN + 'test_epoch_batches_are_a_seeded_permutation'
BAG = TRAIN + 'test_a_bag_is_a_seeded_subset_that_every_epoch_goes_over_once'
BATCHNORM = MODELS + 'test_batchnorm_uses_kerass_momentum_and_epsilon'
DROPOUT_RATE = MODELS + 'test_dropout_zeroes_the_rate_and_rescales_the_rest'
DROPOUT_PLACES = MODELS + 'test_dropout_sits_after_each_conv_block_and_after_fc3'
BUILD = MODELS + 'test_train_build_passes_the_config_to_the_model_and_preprocessing'
SPLITS = DATA + 'test_splits_are_fixed_disjoint_and_seeded'
SHA = DATA + 'test_each_of_the_four_idx_files_is_checked'
BEST = CKPT + 'test_the_best_checkpoint_is_the_highest_validation_accuracy'
TO_MNIST = DIGIT_IMAGE + 'test_to_mnist_inverts_fits_20x20_and_centres_by_mass'
ROUND_TRIP = DIGIT_IMAGE + 'test_to_mnist_gives_back_real_mnist_digits'
PLATFORM = ('tests/test_platform.py::'
            'test_accelerators_keep_xlas_defaults_and_a_rolled_scan')
EXPORT = ('tests/test_export.py::'
          'test_a_plain_jax_process_predicts_what_eval_computes')
LOOP = TRAIN + 'test_the_loop_hands_each_epochs_validation_figures_on'
FAULTS = 'tests/test_machine_faults.py::'
HOST_KILLED = ('tests/test_parallel.py::test_a_host_killed_mid_run_ends_the_'
               'other_in_one_line_and_it_resumes')
CHOSEN_ON_VALIDATION = ('tests/test_ensemble.py::test_the_chosen_ensemble_is_'
                        'chosen_on_validation_alone')
RATE_FLOOR = ('tests/test_ensemble.py::test_each_members_plateau_floor_is_its_'
              'own_swept_rates')
ENSEMBLE_LOOP = ('tests/test_ensemble.py::test_the_loop_reports_each_members_'
                 'validation_loss_to_its_plateau')

SWEEP = 'tests/test_sweep.py::'
SWEEP_MEMBER = SWEEP + 'test_each_member_is_the_single_run_with_its_values'
USER_MODELS = 'tests/test_user_models.py::'
EMA_NUMPY = SWEEP + 'test_the_moving_average_follows_its_numpy_derivation'

USER = 'tests/test_user_inputs.py::'
METRICS_FILE = 'tests/test_metrics_file.py::'
LOCK = 'tests/test_run_lock.py::'
STOP = 'tests/test_interruption.py::'
RELIABILITY = 'tests/test_reliability.py::'
CLOSED_TERMINAL = (RELIABILITY + 'test_a_closed_terminal_saves_a_checkpoint_'
                   'exits_0_and_leaves_no_lock')
TPU = 'tests/test_tpu_compile.py::'
SERVE_DRAIN = ('tests/test_serve.py::test_a_stopped_server_answers_what_it_'
               'accepted_and_refuses_the_rest')

MUTATIONS = (
    # The optimizer chain.
    _m('l2_after_adam', 'digits_jax/optim.py',
       'optax.chain(l2, adam, scale_by_plateau()',
       'optax.chain(adam, l2, scale_by_plateau()', [RECIPE],
       "the article's coupled L2 becomes a negligible decoupled decay"),
    _m('l2_without_factor_2', 'digits_jax/optim.py',
       '2 * l2_weight, mask=', 'l2_weight, mask=', [RECIPE],
       "half of Keras' l2(5e-4) gradient"),
    _m('l2_on_every_kernel', 'digits_jax/optim.py',
       "return names[-1] == 'kernel' and any(n in kernel_names for n in names)",
       "return names[-1] == 'kernel'", [L2_LAYERS],
       'L2 on all kernels instead of two'),
    _m('l2_on_the_wrong_layers', 'digits_jax/models/improved_lenet.py',
       "L2_REGULARIZED = ('conv1', 'conv3')",
       "L2_REGULARIZED = ('conv1', 'conv2')", [L2_LAYERS],
       'L2 on another conv kernel than the article'),
    _m('adam_b2_is_b1', 'digits_jax/optim.py',
       'b2=config.adam_b2', 'b2=config.adam_b1', [RECIPE],
       "Adam's second moment decays like the first"),
    _m('plateau_patience_off_by_one', 'digits_jax/optim.py',
       'cut = num_bad >= patience', 'cut = num_bad > patience', [PLATEAU],
       'the LR cut an epoch late'),
    _m('plateau_min_delta_sign', 'digits_jax/optim.py',
       'loss < state.best_loss - min_delta',
       'loss < state.best_loss + min_delta', [PLATEAU_DELTA],
       'tiny worsenings count as improvements'),
    _m('plateau_no_floor', 'digits_jax/optim.py',
       'jnp.maximum(state.scale * factor, min_scale)',
       'state.scale * factor', [PLATEAU_DELTA],
       'the LR falls below min_learning_rate'),
    _m('plateau_factor_ignored', 'digits_jax/optim.py',
       'factor=config.plateau_factor,', 'factor=0.5,', [PLATEAU_CONFIG],
       'config.plateau_factor ignored'),
    _m('onecycle_warmup_ignored', 'digits_jax/optim.py',
       'pct_start=config.warmup_fraction', 'pct_start=0.3', [ONECYCLE],
       'config.warmup_fraction ignored'),
    # Augmentation and preprocessing.
    _m('preprocess_drops_shift', 'digits_jax/steps.py',
       'shift_range=self.shift_range)', 'shift_range=0.0)', [AUG_ORDER],
       'config.shift_range ignored'),
    _m('build_drops_rotation', 'digits_jax/recipe.py',
       'rotation_degrees=config.rotation_degrees,', 'rotation_degrees=10.0,',
       [BUILD], 'config.rotation_degrees ignored'),
    _m('augmentation_one_sided', 'digits_jax/augment.py',
       'minval=center - bound', 'minval=center', [AUG_RANGES],
       'rotations, zooms and shifts only one way'),
    _m('zoom_axes_share_a_draw', 'digits_jax/augment.py',
       'zoom_y=uniform(keys[2], zoom_range, 1.0)',
       'zoom_y=uniform(keys[1], zoom_range, 1.0)', [AUG_RANGES],
       'zoom always uniform in x and y (Keras draws them apart)'),
    _m('elastic_unsmoothed', 'digits_jax/augment.py',
       'return weights / weights.sum(1, keepdims=True)',
       'return jnp.eye(size)', [ELASTIC],
       'an elastic field of independent pixels tears the strokes'),
    _m('rotation_sign', 'digits_jax/augment.py',
       'x, y = cos * x - sin * y, sin * x + cos * y',
       'x, y = cos * x + sin * y, -sin * x + cos * y', [AUG_ROTATION],
       'rotations turn the other way'),
    _m('standardize_before_warp', 'digits_jax/steps.py',
       ('x = images.astype(jnp.float32)',
        'return ((x - self.pixel_mean) / self.pixel_std)[..., None]'),
       ('x = (images.astype(jnp.float32) - self.pixel_mean) / self.pixel_std',
        'return x[..., None]'), [AUG_ORDER, AUG_PAD],
       'padding and warped-in background not the standardized 0'),
    _m('padding_on_one_side', 'digits_jax/steps.py',
       'x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad)))',
       'x = jnp.pad(x, ((0, 0), (2 * pad, 0), (pad, pad)))', [AUG_PAD],
       'digits off-centre in the 32x32 input'),
    # The train step.
    _m('step_key_fixed', 'digits_jax/steps.py',
       'step_key = jax.random.fold_in(key, state.step)', 'step_key = key',
       [STEP_RANDOMNESS], 'every step the same augmentation and dropout'),
    _m('dropout_key_is_augment_key', 'digits_jax/steps.py',
       'augment_key, dropout_key = jax.random.split(step_key)',
       'augment_key = dropout_key = step_key', [STEP_RANDOMNESS],
       'dropout masks correlated with the augmentation'),
    _m('step_never_augments', 'digits_jax/steps.py',
       'augment_key if augment_images else None', 'None', [STEP_RANDOMNESS],
       'augmentation silently off'),
    _m('batch_stats_not_kept', 'digits_jax/steps.py',
       'batch_stats=batch_stats, opt_state=opt_state,',
       'batch_stats=state.batch_stats, opt_state=opt_state,',
       [STEP_RANDOMNESS], "BatchNorm's running statistics never move"),
    # The model.
    _m('batchnorm_momentum', 'digits_jax/models/improved_lenet.py',
       'momentum=0.99, epsilon=1e-3', 'momentum=0.9, epsilon=1e-3',
       [BATCHNORM], "PyTorch's momentum instead of Keras'"),
    _m('batchnorm_epsilon', 'digits_jax/models/improved_lenet.py',
       'momentum=0.99, epsilon=1e-3', 'momentum=0.99, epsilon=1e-5',
       [BATCHNORM], "Flax's epsilon instead of Keras'"),
    _m('dropout_keeps_the_rate', 'digits_jax/models/improved_lenet.py',
       'keep = 1.0 - self.rate', 'keep = self.rate', [DROPOUT_RATE],
       'dropout 0.25 drops three quarters'),
    _m('dropout_not_rescaled', 'digits_jax/models/improved_lenet.py',
       'lax.select(mask, x / keep, jnp.zeros_like(x))',
       'lax.select(mask, x, jnp.zeros_like(x))', [DROPOUT_RATE],
       'activations shrink in training only'),
    _m('last_dropout_missing', 'digits_jax/models/improved_lenet.py',
       'x = dropout()(x)\n    x = nn.Dense(self.num_classes',
       'x = nn.Dense(self.num_classes', [DROPOUT_PLACES],
       'no dropout before the classifier'),
    _m('build_drops_dropout_rate', 'digits_jax/recipe.py',
       "{'dropout_rate': config.dropout_rate}", "{'dropout_rate': 0.25}",
       [BUILD], 'config.dropout_rate ignored'),
    # The data.
    _m('validation_overlaps_train', 'digits_jax/input_pipeline.py',
       'train_idx = np.sort(order[config.validation_size:])',
       'train_idx = np.sort(order[config.validation_size - 1:])', [SPLITS],
       'a validation image is also trained on'),
    _m('pixel_stats_from_all_images', 'digits_jax/input_pipeline.py',
       'pixel_mean=float(train_images.mean())',
       'pixel_mean=float(images.mean())', [SPLITS],
       'standardization sees the validation images'),
    _m('split_ignores_its_seed', 'digits_jax/input_pipeline.py',
       'np.random.default_rng(config.split_seed)', 'np.random.default_rng(0)',
       [SPLITS], 'config.split_seed ignored'),
    _m('one_idx_file_unchecked', 'digits_jax/mnist_files.py',
       'for name, expected in IDX_SHA256.items():',
       'for name, expected in list(IDX_SHA256.items())[:3]:', [SHA],
       'a corrupt label file accepted'),
    _m('epochs_share_one_order', 'digits_jax/steps.py',
       'jax.random.permutation(jax.random.fold_in(key, epoch), size)',
       'jax.random.permutation(key, size)', [EPOCH_ORDER],
       'every epoch the same batches'),
    _m('bag_ignored', 'digits_jax/steps.py',
       'order = bag(key, num_examples, size)[order]', 'order = order', [BAG],
       'a bagged run trains on its first images, not its bag'),
    # Evaluation and the best checkpoint.
    _m('evaluator_last_rows', 'digits_jax/evaluation.py',
       'return np.stack([np.asarray(self._logits(member, images))[:n]',
       'return np.stack([np.asarray(self._logits(member, images))[-n:]',
       [EVAL_ORDER], 'logits of the padding images'),
    _m('report_loss_summed', 'digits_jax/evaluation.py',
       "'loss': float(-log_probs[np.arange(len(labels)), labels].mean())",
       "'loss': float(-log_probs[np.arange(len(labels)), labels].sum())",
       [REPORT], 'validation loss scaled by the split size'),
    _m('best_checkpoint_lowest_accuracy', 'digits_jax/checkpoint.py',
       "best_mode='max'", "best_mode='min'", [BEST],
       'the worst checkpoint evaluated'),
    _m('best_checkpoint_by_loss', 'digits_jax/checkpoint.py',
       "BEST_METRIC = 'val_accuracy'", "BEST_METRIC = 'val_loss'", [BEST],
       'the highest-loss checkpoint evaluated'),
    # The platform's choices and the exported model.
    _m('accelerators_unroll_the_scan', 'digits_jax/platform.py',
       'return self.is_cpu\n', 'return True\n', [PLATFORM],
       'GPU/TPU compile every step of an epoch as straight-line code'),
    _m('cpu_features_ignored', 'digits_jax/platform.py',
       '        self.conv_impl == \'auto\' and self.cpu_features & BFLOAT16_UNITS)',
       '        self.conv_impl == \'auto\' and False)',
       ['tests/test_xla_options.py::'
        'test_the_cpus_instruction_sets_choose_the_convolutions'],
       'a CPU with bfloat16 units keeps Eigen: bfloat16 steps at half speed'),
    _m('onednn_without_onednn', 'digits_jax/xla_options.py',
       "  return '__onednn$' in compiled.as_text()",
       '  return True',
       ['tests/test_xla_options.py::test_jax_0_12_has_onednn'],
       'JAX 0.10 told oneDNN options it ignores: Eigen\'s weight-gradient '
       'choice unmeasured there'),
    _m('export_returns_logits', 'digits_jax/export.py',
       'jax.nn.softmax(model.apply_eval(v, x), axis=-1) for v in members]',
       'model.apply_eval(v, x) for v in members]', [EXPORT],
       'the served model answers logits, not probabilities'),
    # The training loop's wiring: what it hands to the plateau and to the
    # choice of the best checkpoint.
    _m('plateau_fed_the_train_loss', 'digits_jax/train.py',
       '      state.opt_state, losses, config))',
       '      state.opt_state, [float(np.concatenate(\n'
       "          [m['loss'] for m in train_metrics['dispatches']]).mean())]"
       ' * len(losses), config))',
       [LOOP], 'the LR cut when the training loss stalls, not validation'),
    _m('plateaus_fed_the_ensemble_loss', 'digits_jax/train.py',
       '      state.opt_state, losses, config))',
       "      state.opt_state, [val['loss']] * len(losses), config))",
       [ENSEMBLE_LOOP],
       "every member's LR cut on the ensemble's loss, not its own"),
    _m('best_checkpoint_by_train_accuracy', 'digits_jax/train.py',
       "record = {'val_accuracy': chosen['accuracy'],",
       "record = {'val_accuracy': float(np.concatenate(\n"
       "    [m['accuracy'] for m in train_metrics['dispatches']]).mean()),",
       [LOOP], 'the best checkpoint chosen on training accuracy'),
    _m('best_checkpoint_by_member_0', 'digits_jax/train.py',
       '  chosen = val\n  if members.is_sweep:',
       '  chosen = member_val[0]\n  if members.is_sweep:',
       [ENSEMBLE_LOOP], "an ensemble's best checkpoint chosen on member 0"),
    # configs/improved.py, the article's recipe.
    _m('article_rotation', 'configs/improved.py',
       'config.rotation_degrees = 10.0', 'config.rotation_degrees = 15.0',
       [CONFIGS], 'rotations of 15 degrees, not 10'),
    _m('article_zoom', 'configs/improved.py', 'config.zoom_range = 0.1',
       'config.zoom_range = 0.2', [CONFIGS], 'zooms of 20%, not 10%'),
    _m('article_shift', 'configs/improved.py', 'config.shift_range = 0.1',
       'config.shift_range = 0.15', [CONFIGS], 'shifts of 15%, not 10%'),
    _m('article_dropout', 'configs/improved.py', 'config.dropout_rate = 0.25',
       'config.dropout_rate = 0.5', [CONFIGS], 'dropout 0.5, not 0.25'),
    _m('article_input_size', 'configs/improved.py', 'config.input_size = 32',
       'config.input_size = 28', [CONFIGS], 'no 32x32 padding'),
    _m('article_adam_epsilon', 'configs/improved.py',
       'config.adam_eps = 1e-7', 'config.adam_eps = 1e-8', [CONFIGS],
       "PyTorch's Adam epsilon, not Keras'"),
    _m('article_batch_size', 'configs/improved.py', 'config.batch_size = 64',
       'config.batch_size = 128', [CONFIGS], 'batch 128, not 64'),
    _m('article_plateau_factor', 'configs/improved.py',
       'config.plateau_factor = 0.2', 'config.plateau_factor = 0.5',
       [CONFIGS], 'the LR halved on a plateau, not cut to a fifth'),
    _m('article_l2', 'configs/improved.py', 'config.l2 = 5e-4',
       'config.l2 = 5e-3', [CONFIGS], "ten times the article's L2"),
    # Predict's preprocessing.
    _m('predict_box_28', 'digits_jax/digit_image.py',
       'scale = 20.0 / max(digit.shape)', 'scale = 28.0 / max(digit.shape)',
       [TO_MNIST, ROUND_TRIP], 'digits larger than MNIST\'s 20x20 box'),
    _m('predict_centre_axes_swapped', 'digits_jax/digit_image.py',
       'top = int(np.clip(round(14 - com_y)',
       'top = int(np.clip(round(14 - com_x)', [ROUND_TRIP],
       'digits placed off-centre'),
    _m('predict_polarity_flipped', 'digits_jax/digit_image.py',
       'return on_border < 0.5', 'return on_border > 0.5',
       [TO_MNIST, ROUND_TRIP], 'dark ink on white paper read as paper'),
    _m('predict_specks_kept', 'digits_jax/digit_image.py',
       'return largest\n', 'return mask\n',
       [DIGIT_IMAGE + 'test_specks_away_from_the_digit_are_ignored'],
       'a speck on the page shrinks and shifts the digit'),
    _m('predict_several_marks_guessed', 'digits_jax/digit_image.py',
       'if len(digit_sized) > 1:', 'if len(digit_sized) > 9:',
       [DIGIT_IMAGE + 'test_several_digit_sized_marks_are_refused'],
       'an image of two digits predicted as one'),
    _m('predict_grain_is_ink', 'digits_jax/digit_image.py',
       'MIN_INK_CONTRAST = 32', 'MIN_INK_CONTRAST = 0',
       [DIGIT_IMAGE + 'test_paper_without_a_digit_is_blank'],
       'a blank grainy page predicted as a digit'),
    # Reliability (docs/reliability.md's table).
    _m('resume_takes_another_recipe', 'digits_jax/train.py',
       '    checkpoint.check_same_recipe(meta, config, workdir)\n',
       '    pass\n', [RECIPE_RESUME],
       'a resume with another batch size or learning rate taken silently'),
    _m('batch_size_may_change_on_resume', 'digits_jax/checkpoint.py',
       "'data_dir', 'eval_batch_size',", "'data_dir', 'batch_size', "
       "'eval_batch_size',", [RECIPE_RESUME],
       'a resume that changes the batch size midway'),
    _m('damaged_checkpoint_ends_the_run', 'digits_jax/checkpoint.py',
       '      meta = read_meta(manager, step)\n'
       '    except Exception as e:  # pylint: disable=broad-except\n'
       '      damaged.append((step, in_one_line(e)))\n      continue\n',
       '      meta = read_meta(manager, step)\n'
       '    except Exception as e:  # pylint: disable=broad-except\n'
       '      raise\n', [DAMAGED_FILES],
       'a traceback for one garbled file, with good checkpoints beside it'),
    _m('sigterm_at_start_up_kills', 'digits_jax/interruption.py',
       'raise Interrupted(name, self._after_training)',
       'raise SystemExit(143)',
       ['tests/test_interruption.py::'
        'test_outside_the_loop_a_signal_stops_at_once'],
       'a job preempted while it compiles looks like a crash'),
    _m('workdir_not_locked', 'digits_jax/train.py',
       'lock = (run_lock.held(workdir, stop_signal) if jax.process_index() == 0',
       'lock = (contextlib.nullcontext() if jax.process_index() == 0',
       ['tests/test_reliability.py::'
        'test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one'],
       'two runs writing one workdir at once'),
    _m('stale_lock_never_taken_over', 'digits_jax/run_lock.py',
       "or _alive(holder['pid'])):", 'or True):',
       ['tests/test_run_lock.py::'
        'test_a_lock_whose_holder_is_gone_is_taken_over'],
       'a run killed with -9 locks its workdir for good'),
    _m('damaged_dataset_traceback', 'digits_jax/input_pipeline.py',
       '    raise _DamagedDataset(in_one_line(e, limit=200)) from e',
       '    raise RuntimeError(in_one_line(e, limit=200)) from e',
       [DATA + 'test_a_damaged_prepared_dataset_is_moved_aside_and_prepared_'
        'afresh'], 'a truncated dataset file ends in a traceback'),
    # Sweeps, weight averaging, label smoothing (tests/test_sweep.py).
    _m('ema_without_warmup_cap', 'digits_jax/steps.py',
       'return jnp.minimum(jnp.asarray(decay, jnp.float32),',
       'return jnp.maximum(jnp.asarray(decay, jnp.float32),', [EMA_NUMPY],
       'the average weighs the initialization for thousands of steps'),
    _m('ema_of_the_old_weights', 'digits_jax/steps.py',
       "ema = update_ema(ema, {'params': params, 'batch_stats': batch_stats},",
       "ema = update_ema(ema, {'params': state.params,\n"
       "                        'batch_stats': state.batch_stats},",
       [EMA_NUMPY], 'the average lags one step behind'),
    _m('inference_ignores_the_average', 'digits_jax/steps.py',
       '    if self.ema is not None:\n      return self.ema',
       '    if False:\n      return self.ema', [EMA_NUMPY, SWEEP_MEMBER],
       'ema_decay kept but never used'),
    _m('smoothing_against_the_label_only', 'digits_jax/steps.py',
       'uniform = -jax.nn.log_softmax(logits).mean(-1)',
       'uniform = plain', [SWEEP + 'test_label_smoothing_is_cross_entropy_'
                           'against_smoothed_targets'],
       'label smoothing silently off'),
    _m('sweep_ignores_dropout', 'digits_jax/recipe.py',
       "if 'dropout_rate' in values else model)", 'if False else model)',
       [SWEEP_MEMBER], "every member trains with the config's dropout"),
    _m('sweep_ignores_augmentation', 'digits_jax/recipe.py',
       "k: values[k] for k in ('rotation_degrees', 'zoom_range', "
       "'shift_range')",
       "k: values[k] for k in ()", [SWEEP_MEMBER],
       "every member augments as the config says"),
    _m('sweep_members_share_a_seed', 'digits_jax/members.py',
       'keys = jnp.stack([of(s) for s in self.seeds])',
       'keys = jnp.stack([of(self.seeds[0]) for s in self.seeds])',
       [SWEEP_MEMBER], 'swept seeds ignored'),
    # Faults of the machine: one line, nothing partial left, resumable.
    _m('partial_checkpoint_left_behind', 'digits_jax/checkpoint.py',
       '    remove_partial(manager.directory, step)\n', '    pass\n',
       [FAULTS + 'test_a_full_disk_at_the_first_checkpoint_leaves_nothing_'
        'behind'],
       "a checkpoint that did not fit leaves its partial folder holding "
       "the space"),
    _m('write_fault_not_recognized', 'digits_jax/paths.py',
       '    fault = write_fault(e)\n', '    fault = None\n',
       [FAULTS + 'test_a_full_disk_at_a_later_checkpoint_then_the_rerun_'
        'resumes_bit_for_bit'],
       'a full disk ends in library tracebacks, not one line'),
    _m('lost_process_not_recognized', 'digits_jax/parallel.py',
       '  if not any(words in text for words in _LOST_PEER):\n    return None',
       '  if True:\n    return None',
       [HOST_KILLED], 'a host killed mid-run ends the others in tracebacks'),
    _m('lost_process_waits_for_the_heartbeat', 'digits_jax/main.py',
       '    os._exit(1)  # pylint: disable=protected-access',
       '    sys.exit(1)',
       [HOST_KILLED], 'the others wait for the heartbeat timeout, then abort '
       'with a C++ trace'),
    _m('read_only_eval_fails', 'digits_jax/evaluation.py',
       '      if must_write:\n        raise',
       '      if True:\n        raise',
       [FAULTS + 'test_eval_predict_and_serve_on_a_read_only_run_do_their_job'],
       '--mode=eval on a read-only run fails instead of printing its '
       'figures'),
    _m('remote_checkpoint_without_deadline', 'digits_jax/checkpoint.py',
       '    if paths.is_remote(manager.directory):\n      # A bucket',
       '    if False:\n      # A bucket',
       [FAULTS + 'test_a_checkpoint_to_a_bucket_that_does_not_answer_fails_'
        'in_the_deadline'],
       "a bucket that stops answering during a checkpoint hangs the run in "
       "the client's retries"),
    _m('remote_write_without_deadline', 'digits_jax/paths.py',
       '    write_remote(what or path.name, path, lambda: write(path))\n',
       '    write(path)\n',
       ['tests/test_cloud_storage.py::test_a_bucket_that_stops_answering_mid_'
        'run_is_one_line_and_resumes'],
       "a bucket that stops answering during the metrics' write hangs the "
       "run in the client's retries"),
    # The member axis: choices made on validation, each member's own rate.
    _m('chosen_ensemble_looks_at_the_test_set', 'digits_jax/evaluation.py',
       'chosen = members_lib.choose_by_validation(val_logits, val_labels)',
       'chosen = members_lib.choose_by_validation(test_logits, test_labels)',
       [CHOSEN_ON_VALIDATION],
       "eval's ensemble of a sweep's best members chosen on the test set"),
    _m('chosen_ensemble_takes_every_member', 'digits_jax/members.py',
       'k = 1 + int(np.argmax(val_by_k))', 'k = len(order)',
       [CHOSEN_ON_VALIDATION],
       "eval's chosen ensemble is every member, whatever validation says"),
    _m('swept_rate_floor_is_the_configs', 'digits_jax/members.py',
       '        s, loss, config, rate))(opt_state, losses,',
       '        s, loss, config))(opt_state, losses,',
       [RATE_FLOOR], "a swept rate's plateau floor set by config.learning_rate"),
    _m('swept_rate_floor_is_member_0s', 'digits_jax/members.py',
       '                                jnp.asarray(rates, jnp.float32))',
       '                                jnp.asarray([rates[0]] * len(rates), '
       'jnp.float32))',
       [RATE_FLOOR], "every member's plateau floor set by member 0's rate"),
    _m('sweep_grid_as_zip', 'digits_jax/sweep.py',
       "if config.sweep_mode == 'zip':", 'if True:',
       [SWEEP + 'test_a_grid_is_every_combination_the_first_key_slowest'],
       'a grid of 6 trains 2 members'),
    # What users and operators feed it (#46).
    _m('exif_orientation_ignored', 'digits_jax/predict.py',
       'digit_image.to_mnist(ImageOps.exif_transpose(image))',
       'digit_image.to_mnist(image)',
       [USER + 'test_a_photo_stored_sideways_is_read_upright'],
       "a phone's portrait photo read sideways"),
    _m('wide_images_clipped_at_255', 'digits_jax/digit_image.py',
       'channels = _channels(_working_image(as_8bit(image)))',
       'channels = _channels(_working_image(image))',
       [USER + 'test_wide_and_float_images_are_scaled_as_their_mode_says'],
       'a 16-bit or float scan read as a blank image'),
    _m('float_digits_at_1_not_scaled', 'digits_jax/predict.py',
       'if array.max() <= 1.0:', 'if array.max() < 1.0:',
       [USER + 'test_float_npy_digits_in_0_1_reach_255_at_their_upper_bound'],
       'float digits whose ink reaches 1.0 read as nearly black'),
    _m('empty_folder_says_nothing', 'digits_jax/predict.py',
       '        errors.append((spec, empty))', '        pass',
       [USER + 'test_a_folder_with_nothing_to_read_is_an_error_naming_what_'
        'it_holds'], 'predict on an empty folder exits 0 having said nothing'),
    _m('npz_read_as_npy', 'digits_jax/predict.py',
       'if isinstance(array, np.lib.npyio.NpzFile):', 'if False:',
       [USER + 'test_an_npz_under_an_npy_name_is_that_files_error_alone'],
       'an .npz under a .npy name: a cryptic AttributeError line'),
    _m('odd_file_stops_the_rest', 'digits_jax/predict.py',
       '    except Exception as e:  # pylint: disable=broad-exception-caught\n'
       '      # Whatever else',
       '    except ZeroDivisionError as e:  # pylint: disable=broad-exception-'
       'caught\n      # Whatever else',
       [USER + 'test_a_decoder_failing_in_an_unexpected_way_is_that_files_'
        'error_alone'], "one strange file loses every other file's result"),
    _m('output_dash_is_a_file', 'digits_jax/paths.py',
       'if output == STANDARD_OUTPUT:', 'if False:',
       [USER + 'test_standard_output_is_written_after_what_was_printed'],
       "--output=- writes a file named '-'"),
    _m('stdout_link_renamed_over', 'digits_jax/paths.py',
       '  fd = _open_descriptor(os.fspath(path))', '  fd = None',
       [USER + 'test_standard_output_is_written_after_what_was_printed'],
       '--output=/dev/stdout replaces the link (as root, the machine\'s)'),
    _m('predict_lines_mixed_into_the_json', 'digits_jax/predict.py',
       'lines = sys.stderr if output == paths.STANDARD_OUTPUT else sys.stdout',
       'lines = sys.stdout',
       [USER + 'test_predict_output_dash_is_json_alone_on_stdout'],
       '--output=- prints lines and JSON together: the JSON does not parse'),
    _m('damaged_metrics_line_raises', 'digits_jax/reports.py',
       '    except ValueError:\n      record = None',
       '    except ZeroDivisionError:\n      record = None',
       [METRICS_FILE + 'test_damaged_lines_are_left_out_with_one_warning'],
       'a cut metrics.jsonl line: a JSONDecodeError traceback in eval'),
    _m('damaged_metrics_line_kept', 'digits_jax/train.py',
       '    return [line for line, _ in records]',
       '    return text.splitlines()',
       [METRICS_FILE + 'test_training_moves_damaged_lines_aside_and_keeps_'
        'the_rest'], 'a resumed run rewrites the damaged line each epoch'),
    _m('lock_of_an_earlier_life_refused', 'digits_jax/run_lock.py',
       "    return (holder.get('start_ticks') is not None\n",
       "    return True or (holder.get('start_ticks') is not None\n",
       [LOCK + 'test_a_lock_from_an_earlier_life_of_this_pid_is_taken_over'],
       'a restarted container refused its own workdir until the lock is '
       'deleted by hand'),
    _m('lock_of_a_reused_pid_refused', 'digits_jax/run_lock.py',
       '  return started is None or now is None or started == now',
       '  return True',
       [LOCK + 'test_a_pid_another_process_has_now_is_not_the_holder'],
       'an unrelated process with the old pid holds the workdir'),
    _m('lock_cut_by_a_signal', 'digits_jax/run_lock.py',
       '  uninterrupted = (stop_signal.deferred if stop_signal is not None\n',
       '  uninterrupted = (contextlib.nullcontext if stop_signal is not None\n',
       [LOCK + 'test_a_stop_signal_while_the_lock_changes_hands_leaves_none'],
       'a terminal closed as the run starts leaves its lock behind (CI, '
       'stop 48)'),
    _m('lock_survives_a_reboot', 'digits_jax/run_lock.py',
       '    return False  # The machine rebooted since.',
       '    pass  # The machine rebooted since.',
       [LOCK + 'test_a_lock_from_before_a_reboot_is_taken_over'],
       'a lock from before a reboot refused while its pid is reused'),
    _m('sighup_kills_the_run', 'digits_jax/interruption.py',
       'STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)',
       'STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)',
       [STOP + 'test_a_closed_terminal_sighup_stops_as_sigterm_does'],
       'closing the terminal kills the run, an epoch lost'),
    _m('sighup_writes_to_the_dead_terminal', 'digits_jax/interruption.py',
       '      self._leave_the_terminal()', '      pass',
       [CLOSED_TERMINAL], 'the stop line written to a hung-up terminal: '
       'exit 1 instead of 0'),
    _m('swallowed_signal_not_delivered_again', 'digits_jax/interruption.py',
       'if isinstance(unraisable.exc_value, Interrupted):', 'if False:',
       [STOP + 'test_a_signal_python_could_not_raise_is_delivered_again'],
       'a SIGTERM landing in a gc callback prints a traceback and is lost'),
    _m('start_up_signal_not_raised_at_the_loop', 'digits_jax/interruption.py',
       '    if self._pending is not None:\n      raise self._pending',
       '    if self._pending is not None:\n      pass',
       [STOP + 'test_a_swallowed_start_up_signal_is_raised_when_the_loop_'
        'starts'], 'a swallowed start-up SIGTERM: the run trains to its end'),
    _m('finite_divergence_ignored', 'digits_jax/train.py',
       '  newly = [j for j in np.flatnonzero(means > limit) if j not in '
       'diverged]', '  newly = []',
       ['tests/test_train.py::test_a_loss_far_above_a_guess_stops_a_run_and_'
        'names_the_rate'], 'learning_rate=1e4 ends at chance with exit 0'),
    _m('one_diverged_member_ends_the_sweep', 'digits_jax/train.py',
       '  if members.is_sweep and len(diverged) < members.num_models:',
       '  if False:',
       ['tests/test_train.py::test_a_sweep_trains_on_while_some_members_learn'],
       'a sweep over rates dies with its highest rate'),
    _m('distributed_without_a_cluster_traceback', 'digits_jax/parallel.py',
       "    if 'coordinator_address' not in str(e):", '    if True:',
       ['tests/test_cli.py::test_distributed_without_a_cluster_is_one_line'],
       '--distributed alone: a ValueError traceback'),
    _m('lost_peer_wording_of_jax_0_10', 'digits_jax/parallel.py',
       "'heartbeat timeout', 'stopped sending heartbeats',",
       "'heartbeat timeout',",
       ['tests/test_cli.py::test_each_wording_of_a_lost_peer_names_it'],
       "a peer lost in a checkpoint's barrier on JAX 0.10: a traceback"),
    _m('serve_stop_drops_accepted_requests', 'digits_jax/serve.py',
       '    unanswered = server.drain()', '    unanswered = 0',
       [SERVE_DRAIN], 'SIGTERM: the requests on their way get no answer'),
    _m('serve_health_ok_while_stopping', 'digits_jax/serve.py',
       '      stopping = self.server.stopping.is_set()',
       '      stopping = False', [SERVE_DRAIN],
       'a load balancer keeps sending to a stopping server'),
    _m('ranking_ignores_the_loss', 'digits_jax/members.py',
       'key=lambda j: (-accuracies[j], losses[j], j))',
       'key=lambda j: (-accuracies[j], j))',
       ['tests/test_ensemble.py::test_members_tied_on_validation_accuracy_'
        'rank_by_the_lower_loss'],
       'of two members tied on accuracy, the less sure one is called best'),
    _m('floor_above_the_peak_allowed', 'digits_jax/config_checks.py',
       '  _require(0 < config.min_learning_rate <= config.learning_rate,',
       '  _require(0 < config.min_learning_rate,',
       [SWEEP + 'test_a_bad_sweep_is_one_line_and_exit_code_2'],
       'a floor above the peak: the one-cycle schedule climbs as it decays'),
    _m('modes_load_the_latest_checkpoint', 'digits_jax/restore.py',
       '      manager, checkpoint.best_first(manager),',
       '      manager, sorted(manager.all_steps(), reverse=True),',
       [RELIABILITY + 'test_eval_predict_export_and_serve_load_the_best_'
        'checkpoint_not_the_latest'],
       'eval, predict, export and serve take the last epoch, not the best'),
    # The TPU path, compiled by libtpu (#44): changes that break it alone.
    _m('tpu_scan_unrolled', 'digits_jax/platform.py',
       '  def unroll_scan(self) -> bool:\n    return self.is_cpu',
       '  def unroll_scan(self) -> bool:\n    return True',
       [TPU + 'test_a_run_compiles_for_a_slice_with_its_programs_and_a_'
        'rolled_scan'],
       "the CPU's unrolled scan on a TPU: an epoch's dispatch unrolled "
       '390 times'),
    _m('tpu_batch_not_split', 'digits_jax/parallel.py',
       'batch_indices=sharding(None, AXIS), metrics=sharding())',
       'batch_indices=sharding(), metrics=sharding())',
       [TPU + 'test_flops_per_step_agree_with_the_models_count'],
       'every chip of a slice computes the whole batch'),
    _m('tpu_compile_on_the_real_shapes_not', 'digits_jax/tpu_compile.py',
       '  return total - config.validation_size',
       '  return total',
       [TPU + 'test_the_arguments_hbm_is_the_state_and_the_dataset'],
       "the compile's dataset is not the one training holds"),
    # The model seam, the optimizer built once, evaluation on the mesh.
    _m('nnx_dropout_not_reseeded', 'digits_jax/models/nnx_adapter.py',
       'jax.random.fold_in(key, i)', 'jax.random.fold_in(jax.random.key(0), i)',
       [USER_MODELS + 'test_train_mode_draws_dropout_from_the_key_and_eval_'
        'mode_does_not'],
       'an NNX model drops the same units at every step'),
    _m('nnx_inference_in_training_mode', 'digits_jax/models/nnx_adapter.py',
       'module = self._module(self._eval_graph,',
       'module = self._module(self._train_graph,',
       [USER_MODELS + 'test_train_mode_draws_dropout_from_the_key_and_eval_'
        'mode_does_not'],
       "an NNX model's inference normalizes by the batch and drops out"),
    _m('member_value_ignores_the_member', 'digits_jax/optim.py',
       'return make(hparams[key]).update(updates, state, params)',
       'return template.update(updates, state, params)', [SWEEP_MEMBER],
       'every member of a learning-rate sweep trains at the config\'s rate'),
    _m('evaluator_repeats_the_first_member', 'digits_jax/evaluation.py',
       'members_lib.member_of(variables, i)',
       'members_lib.member_of(variables, 0)',
       ['tests/test_eight_devices.py::test_evaluation_on_the_mesh_gives_one_'
        'devices_logits'],
       "validation scores member 0 for every member"),
)


def _scratch_copy(destination: str) -> None:
  for name in COPIED:
    source = os.path.join(ROOT, name)
    if os.path.isdir(source):
      shutil.copytree(source, os.path.join(destination, name),
                      ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy2(source, destination)


def _apply(mutation: Mutation, root: str) -> str | None:
  """Edits the scratch copy; returns why it cannot, or None."""
  path = os.path.join(root, mutation.path)
  with open(path) as f:
    text = f.read()
  for old, new in mutation.edits:
    count = text.count(old)
    if count != 1:
      return f'stale: {old!r} occurs {count} times in {mutation.path}'
    text = text.replace(old, new)
  with open(path, 'w') as f:
    f.write(text)
  return None


def _run_tests(root: str, tests, data_dir: str, quick: bool = False):
  """(passed, the first failing test or None, seconds). `quick`: only those
  of `tests` in the quick tier (not marked slow); none of them there counts
  as passing, since the quick tier then cannot catch the mutation."""
  env = dict(os.environ, PYTHONPATH=root, DIGITS_JAX_TEST_DATA_DIR=data_dir,
             PYTHONDONTWRITEBYTECODE='1',
             # One compilation cache for all the mutants: each compiles only
             # the programs its mutation changes.
             JAX_COMPILATION_CACHE_DIR=os.path.join(
                 os.path.dirname(data_dir), 'digits_jax_mutation_jax_cache'))
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
       *(['-m', 'not slow'] if quick else []), *tests], cwd=root, env=env,
      capture_output=True, text=True, check=False)
  failed = re.findall(r'^FAILED (\S+)', result.stdout, re.MULTILINE)
  if quick and result.returncode == 5:  # All of them deselected.
    return True, None, time.perf_counter() - start
  if result.returncode not in (0, 1):  # Collection error, crash.
    failed = failed or ['(error: ' + result.stdout.strip().splitlines()[-1]
                        + ')']
  return result.returncode == 0, (failed[0] if failed else None), (
      time.perf_counter() - start)


def _prepare_data(data_dir: str) -> None:
  sys.path.insert(0, ROOT)
  from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline.prepare_mnist(data_dir, try_download=False)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default='',
                      help='comma-separated mutation names')
  parser.add_argument('--list', action='store_true')
  parser.add_argument('--quick', action='store_true',
                      help='run only the catching tests of the quick tier '
                      '(pytest -m "not slow"): which mutations it catches')
  parser.add_argument('--data_dir', default=os.path.join(
      tempfile.gettempdir(), 'digits_jax_mutation_tfds'))
  args = parser.parse_args()
  mutations = MUTATIONS
  if args.only:
    names = set(args.only.split(','))
    unknown = names - {m.name for m in MUTATIONS}
    if unknown:
      parser.error(f'unknown mutations: {sorted(unknown)}')
    mutations = [m for m in MUTATIONS if m.name in names]
  if args.list:
    for m in mutations:
      print(f'{m.name:34s} {m.path:28s} {m.why}')
    return 0

  _prepare_data(args.data_dir)
  # The tests must pass on the code as it is, or a failure means nothing.
  all_tests = sorted({t for m in mutations for t in m.tests})
  with tempfile.TemporaryDirectory() as scratch:
    _scratch_copy(scratch)
    passed, failed, seconds = _run_tests(scratch, all_tests, args.data_dir,
                                         args.quick)
  if not passed:
    print(f'The unmutated code fails {failed}: fix that first.')
    return 1
  print(f'Unmutated: the {len(all_tests)} tests pass ({seconds:.0f} s).\n')

  rows, survivors = [], 0
  for mutation in mutations:
    with tempfile.TemporaryDirectory() as scratch:
      _scratch_copy(scratch)
      problem = _apply(mutation, scratch)
      if problem:
        outcome, by, seconds = 'STALE', problem, 0.0
      else:
        passed, by, seconds = _run_tests(scratch, mutation.tests,
                                         args.data_dir, args.quick)
        outcome = 'SURVIVED' if passed else 'caught'
    survivors += outcome != 'caught'
    by = (by or '').split('::')[-1]
    rows.append((mutation.name, outcome, by))
    print(f'{mutation.name:34s} {outcome:8s} {seconds:5.0f} s  {by}',
          flush=True)
  print(f'\n{len(rows) - survivors} of {len(rows)} mutations caught.')
  return 1 if survivors else 0


if __name__ == '__main__':
  sys.exit(main())
