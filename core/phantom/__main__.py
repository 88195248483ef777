import sys

from core.phantom.generate import main

sys.exit(main())
