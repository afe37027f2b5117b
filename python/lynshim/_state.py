"""Process-wide tracing state shared by the Python modules of lynshim.

Kept in one tiny module so the hot path of every wrapper reads one attribute to learn that tracing is
off, before doing any work to describe a call.
"""

#: True while a native session is recording this process.
active = False
