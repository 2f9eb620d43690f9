"""Files shipped inside the package (the embedded default's pretrained backbone)."""
