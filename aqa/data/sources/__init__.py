"""The converters: one module per source (a challenge's or benchmark's own files, or a training
framework's format) that turns its items into AQA records with the machinery of
`aqa.data.convert`, each registering its `aqa data NAME` command."""
