"""configs/improved.py is the article's recipe, value by value.

Each value with the sentence of the article it comes from
(../shared/article-going-beyond-99-mnist.md, a Chinese translation of
"Going beyond 99%: MNIST handwritten digits recognition"; its Keras code is
quoted as the article prints it). Where the article is silent, the source
named instead: its author's notebook, or Keras' defaults, which the
article's Keras model trains with. What is not the article's (the data
pipeline's own sizes, the trainer's switches) is not held here.
"""

import pytest

from digits_jax import config_checks

# (key, value, source)
ARTICLE = [
    ('model', 'improved_lenet',
     '我们使用两个卷积层，然后是两次池化层(一次分别有 32 个过滤器和 64 个过滤器)'
     '和三个全连接层，最后有 10 个类的 softmax 单元'),
    ('input_size', 32,
     "Conv2D(filters = 32, kernel_size = 5, strides = 1, activation = 'relu',"
     ' input_shape = (32,32,1), kernel_regularizer=l2(0.0005))'),
    ('augment', True,
     '数据扩充 —训练集中的一些图像在两个方向上随机旋转 10 度，缩放 10%，'
     '并在两个方向上移动 10%。'),
    ('rotation_degrees', 10.0, '在两个方向上随机旋转 10 度'),
    ('zoom_range', 0.1, '缩放 10%'),
    ('shift_range', 0.1, '并在两个方向上移动 10%'),
    ('dropout_rate', 0.25,
     '在汇集层和一些全连通层之后增加了三个超参数为 25%的漏失层 (Dropout(0.25))'),
    ('l2', 5e-4, 'kernel_regularizer=l2(0.0005), on Layer 1 and Layer 3'),
    ('lr_schedule', 'plateau',
     "ReduceLROnPlateau(monitor='val_loss', factor = 0.2, patience = 2)"),
    ('plateau_factor', 0.2, '在等待两个时期后，学习率下降了 0.2 倍 (factor = 0.2)'),
    ('plateau_patience', 2, '在等待两个时期后 (patience = 2)'),
    ('num_epochs', 30, '该模型被训练 30 个时期'),
    ('batch_size', 64, "the author's notebook: batch_size=64"),
    # Keras' Adam, with its defaults: tf.keras.optimizers.Adam(
    # learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07).
    ('learning_rate', 1e-3, "Keras' Adam default learning_rate=0.001"),
    ('adam_b1', 0.9, "Keras' Adam default beta_1=0.9"),
    ('adam_b2', 0.999, "Keras' Adam default beta_2=0.999"),
    ('adam_eps', 1e-7, "Keras' Adam default epsilon=1e-07"),
    # Keras' ReduceLROnPlateau defaults beyond what the article sets.
    ('plateau_min_delta', 1e-4, "Keras' ReduceLROnPlateau default "
     'min_delta=1e-4'),
]


@pytest.mark.parametrize('key, value, source', ARTICLE,
                         ids=[key for key, _, _ in ARTICLE])
def test_improved_is_the_articles_recipe(key, value, source):
  config = config_checks.load_config('improved')
  assert config[key] == value, f'config.{key}={config[key]!r}: {source}'
  assert type(config[key]) is type(value), key


@pytest.mark.parametrize('name', ['baseline', 'ensemble', 'fast', 'improved',
                                  'tiny'])
def test_each_config_has_the_recipes_keys_and_types(name):
  config_checks.validate(config_checks.load_config(name),
                         config_checks.default_config())
