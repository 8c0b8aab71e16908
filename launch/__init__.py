"""Entry points: thin command lines over liere and pipelines."""
