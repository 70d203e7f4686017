"""
``python -m subrouter``: the ``subrouter`` command. The services
``install-daemon`` writes run this, with the interpreter of the install, so
they need neither ``twistd`` nor the console scripts on ``PATH``.
"""

import sys

from subrouter.main import main

# name the program as people know it in usage and error lines
sys.argv[0] = "subrouter"
main()
