"""How well a model predicts a text: the validation loss (one layout for training and eval)
and dynamic evaluation."""
