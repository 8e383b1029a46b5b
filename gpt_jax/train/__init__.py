"""Training: the pure train_step, optimizer, train state, and one loop shared by every stage."""
