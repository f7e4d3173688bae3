"""One module per `hovcaffe` subcommand, each exposing a click command named `cli`."""
