import sys

from napari_srgan_sqe.cli import main

sys.exit(main())
