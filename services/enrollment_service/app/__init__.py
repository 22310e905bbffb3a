"""The enrollment service layer: the use cases (one per step), their ports, and the repository."""
