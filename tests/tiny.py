"""The tiny random BERT shape shared by the parity tests: 2 layers, hidden 32, 120 tokens."""

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
)
