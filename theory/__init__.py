"""Theory sandbox: forward-equivalent twins of small nets and their one-step updates.

Data flows one way: ``task`` (data, aligned base) → ``models`` → ``symmetry`` /
``redundancy`` (forward-equivalent reparameterizations) → ``construct`` (hair-trigger
twins) → ``update`` (the victim's exact step) → ``experiments`` (metrics) → ``runs``
(aggregation). ``proofs`` checks every identity used, symbolically.
"""
