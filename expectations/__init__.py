"""Great Expectations 1.x suites and the data-quality gate in front of the daily batch."""
