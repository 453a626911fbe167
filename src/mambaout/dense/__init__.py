"""Dense prediction on the MambaOut backbone: COCO Mask R-CNN (``detection``) and ADE20K UperNet
(``segmentation``), sharing one backbone adapter (``backbone``) and one training engine (``engine``).

Nothing here is imported by ``import mambaout``; torchvision's detection code loads only when a detector is built.
"""
