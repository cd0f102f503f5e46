"""What every command line of the repository shares: argument parsing without heavy imports and the one-line
`error: ...` rule for user mistakes."""
