"""Tasks to discover circuits on: the task registry (``tasks``), the shipped toy IOI
model (``toy_models``), tracr-compiled models (``tracr_models``) and official circuits
(``official``)."""
