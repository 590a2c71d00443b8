"""`python -m host`: the flynn-host command, as the console script runs it (gevent patches the
standard library first, then the same command line)."""
from host.entry import main

if __name__ == "__main__":
    main()
