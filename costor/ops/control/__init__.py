"""The control plane: plan, apply, host keys, pool key slots, the state database itself."""
