"""The metadata workbook: header scan, tag templates, series summary and the Excel writer."""
