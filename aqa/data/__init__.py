"""The data layer: the AQA record, audio decoding, converters from each source, checks."""
