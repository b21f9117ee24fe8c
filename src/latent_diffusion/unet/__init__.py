"""unet."""
