"""Console-script entry point: patch gevent before anything else is imported, then run the CLI."""


def main():
    from gevent import monkey
    monkey.patch_all()
    import sys
    from host.cli import main as cli_main
    sys.exit(cli_main(sys.argv[1:]))
