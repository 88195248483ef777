"""Training networks: configuration, the epoch loop, fitting one network, budgets and cards."""
