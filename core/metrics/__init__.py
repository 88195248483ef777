"""Numbers: binary classification metrics, their intervals and tests, and the studies' published figures."""
