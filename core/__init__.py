"""The trainer: MuSe-Wild data, the LSTM + self-attention model, CCC training and predictions."""
