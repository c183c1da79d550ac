"""The one convention shared by the data that makes training targets and the models that score them."""

IGNORE_INDEX = -100  # a target no loss counts (PyTorch's cross_entropy default)
