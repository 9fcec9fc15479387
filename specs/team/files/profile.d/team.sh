# envc team defaults
export EDITOR=vi
