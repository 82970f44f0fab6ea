# Keep doctest collection from executing the command-line entry point.
collect_ignore = ["mlcourse/__main__.py"]
