# The platform images a factory system can also be built as, through nixpkgs' own modules (24.05:
# each makes its image with nixos/lib/make-disk-image.nix; NixOS 25.05 and later build the same
# modules as system.build.images.<variant>). For each platform:
#   module  the nixpkgs module, relative to nixpkgs/nixos/modules; import it beside images.nix
#   image   the system.build attribute it defines (null: images.nix calls make-disk-image itself,
#           as nixos/maintainers/scripts/openstack/openstack-image.nix does, without its channel)
#   boot    the boot mode its layout implies (factory.image.boot)
#   disk    the kernel module of the disk controller the guest sees (root and data disk alike)
#   file    how the image file's name ends
{
  hyperv = { module = "virtualisation/hyperv-image.nix"; image = "hypervImage"; boot = "efi"; disk = "hv_storvsc"; file = ".vhdx"; };
  vmware = { module = "virtualisation/vmware-image.nix"; image = "vmwareImage"; boot = "efi"; disk = "mptspi"; file = ".vmdk"; };
  virtualbox = { module = "virtualisation/virtualbox-image.nix"; image = "virtualBoxOVA"; boot = "bios"; disk = "ahci"; file = ".ova"; };
  openstack = { module = "virtualisation/openstack-config.nix"; image = null; boot = "bios"; disk = "virtio_blk"; file = ".qcow2"; };
  proxmox = { module = "virtualisation/proxmox-image.nix"; image = "VMA"; boot = "bios"; disk = "virtio_blk"; file = ".vma.zst"; };
}
