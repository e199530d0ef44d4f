"""An ALICE-style crash-state explorer (Pillai et al., OSDI 2014) for the local write protocols.

A writer runs once under ``strace -f -y``; :mod:`.trace` turns its system calls into logical
file-system operations, :mod:`.model` enumerates every state a power loss could leave on disk
after every prefix of those operations (un-fsynced writes and renames reach the disk in any
order), and :mod:`.replay` materializes each distinct state in a scratch directory and judges it
with the oracles.  :mod:`.tree` does the same for a tree of directories (``atomic_directory``,
``CheckpointStore``), on the same parts: the recording machinery of :mod:`.recorder`, the data
and subset enumeration of :mod:`.model`, the replay loop and counts of :mod:`.replay`.
:mod:`.writers` holds the traced writers (ours, and known-bad protocols in plain ``os`` calls);
:mod:`.report` prints the counts at the end of the pytest run.
"""
