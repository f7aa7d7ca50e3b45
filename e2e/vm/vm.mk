# vm.mk: Makefile fragment for the IPVS VM (see e2e/vm/README.md).
# Include it from the top-level Makefile:
#
#   include e2e/vm/vm.mk
#
# and run IPVS tests with   go test -exec $(VM_EXEC) ./ipvs/
# after   make vm-image.
#
# Paths are taken from this file's own location, so the fragment works
# whatever the including Makefile's directory is.

VM_MK_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

# Image cache dir: make VM_DIR=..., or the environment's SVCPROXY_VM_DIR.
VM_DIR ?= $(or $(SVCPROXY_VM_DIR),/var/cache/svcproxy-vm)
export SVCPROXY_VM_DIR := $(VM_DIR)

# `go test -exec $(VM_EXEC)` runs each test binary inside the VM.
VM_EXEC := $(VM_MK_DIR)/run-in-vm.sh

.PHONY: vm-image vm-test vm-clean

# Installs the host packages and builds kernel + initramfs; well under a
# second when the cache is current.
vm-image:
	$(VM_MK_DIR)/build-image.sh

# The runner's own tests: boots the VM twice.
vm-test: vm-image
	cd $(VM_MK_DIR) && go test -count=1 .

# Drops the cached image (the next vm-image downloads the kernel again).
vm-clean:
	rm -f $(VM_DIR)/kernel $(VM_DIR)/initramfs.cpio $(VM_DIR)/stamp $(VM_DIR)/kernel-format $(VM_DIR)/.lock
	rm -rf $(VM_DIR)/debs
	-rmdir $(VM_DIR)
