"""Use cases: each joins the inventory (config), the state database (db) and the pool
engine (store) for one thing a user asks for. The CLI (and later the server and the
scheduler) call these; they never print or choose exit codes."""
