"""Plans: the inventory (desired) against the state and observed facts (actual), as
plain data. Pure — no I/O, no database, no storage: ``costor.ops`` gathers the inputs
and executes the result; this package only decides (Terraform's ``internal/plans``).

- :mod:`costor.plan.resources`: resources and their attributes from the inventory;
- :mod:`costor.plan.reconcile`: the decisions, each with a reason: one declared resource
  in :mod:`costor.plan.decision`, pools (declared or not) in :mod:`costor.plan.pool`;
- :mod:`costor.plan.model`: the plan as frozen data and its JSON form;
- :mod:`costor.plan.planfile`: signed plan files.
"""
