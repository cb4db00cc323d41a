"""flood compare: reading finished runs, grouping, statistics, tables and plots (never torch)."""
