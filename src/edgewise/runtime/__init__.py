"""Running at scale: memory budgets and sub-batching (``memory``), data parallelism
over ``torch.distributed`` (``distributed``), and the ablation values edges are patched
with (``ablation``)."""
