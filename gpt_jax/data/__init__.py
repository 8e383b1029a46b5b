"""Stage 1 of the recipe: datasets (TFDS builders over ../shared/data), the token cache, and the
grain input pipeline. See docs/DATA.md."""
