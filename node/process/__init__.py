"""Processing a complete study: completion, the processor, outbox publish, workbook and NIfTI."""
