"""qframe analysis tools."""
