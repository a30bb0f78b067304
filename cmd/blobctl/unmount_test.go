package main

import "syscall"

func unmount(dir string) error { return syscall.Unmount(dir, 0) }
