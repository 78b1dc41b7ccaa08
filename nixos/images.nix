# Disk images of a factory system, through nixpkgs' nixos/lib/make-disk-image.nix (NixOS 24.05
# has no system.build.images yet).
#
#   factory.image.boot = "efi" | "bios" | "hybrid";
#   config.system.build.factoryImage.qcow2   # nixos.qcow2
#   config.system.build.factoryImage.raw     # nixos.img
#
# One ext4 root labelled "nixos" (GRUB: EFI only, BIOS only, or both on a hybrid GPT disk, with an
# ESP labelled "ESP" on /boot when EFI). The image also carries /nix/nix-path-registration, the
# registration of its store paths, which stage 2 loads into the Nix database on /persist
# (boot.initrd.factoryInit.registerFactoryPaths).
{ config, lib, pkgs, modulesPath, ... }:

let
  cfg = config.factory.image;
  efi = cfg.boot != "bios";
  bios = cfg.boot != "efi";

  partitionTableType = { efi = "efi"; bios = "legacy"; hybrid = "hybrid"; }.${cfg.boot};

  registration = pkgs.closureInfo { rootPaths = [ config.system.build.toplevel ]; };

  image = format: import (modulesPath + "/../lib/make-disk-image.nix") {
    inherit config lib pkgs format partitionTableType;
    inherit (cfg) diskSize;
    name = "factory-image-${cfg.boot}-${format}";
    # a flake-based fleet: no channel in the image (and the registration stays exact)
    copyChannel = false;
    contents = [
      { source = "${registration}/registration"; target = "/nix/nix-path-registration"; }
    ];
  };
in
{
  options.factory.image = {
    boot = lib.mkOption {
      type = lib.types.enum [ "efi" "bios" "hybrid" ];
      default = "hybrid";
      description = "How the image boots: UEFI, BIOS, or both (hybrid GPT).";
    };
    diskSize = lib.mkOption {
      type = lib.types.either (lib.types.enum [ "auto" ]) lib.types.ints.positive;
      default = "auto";
      description = "The image size in MiB, or \"auto\" (the closure plus 512 MiB).";
    };
  };

  config = {
    fileSystems."/" = {
      device = "/dev/disk/by-label/nixos";
      fsType = "ext4";
    };
    fileSystems."/boot" = lib.mkIf efi {
      device = "/dev/disk/by-label/ESP";
      fsType = "vfat";
    };

    boot.loader.grub = {
      enable = true;
      device = if bios then "/dev/vda" else "nodev";
      efiSupport = efi;
      efiInstallAsRemovable = efi;
      extraConfig = ''
        serial --unit=0 --speed=115200
        terminal_input serial console
        terminal_output serial console
      '';
    };

    system.build.factoryImage = lib.genAttrs [ "qcow2" "raw" ] image;
  };
}
