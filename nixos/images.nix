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
#
# Platform images (image-platforms.nix): with factory.image.platform = "hyperv", "vmware",
# "virtualbox", "openstack" or "proxmox", and that platform's nixpkgs module imported beside this
# one, the platform module lays out the disk and the boot loader (this module then sets neither),
# and system.build.factoryImage.<platform> is nixpkgs' own image of it, with
# /nix/nix-path-registration added to the files make-disk-image copies in.
{ config, lib, pkgs, modulesPath, ... }:

let
  cfg = config.factory.image;
  efi = cfg.boot != "bios";
  bios = cfg.boot != "efi";

  partitionTableType = { efi = "efi"; bios = "legacy"; hybrid = "hybrid"; }.${cfg.boot};

  registration = pkgs.closureInfo { rootPaths = [ config.system.build.toplevel ]; };
  platforms = import ./image-platforms.nix;
  generic = cfg.platform == "generic";
  platform = platforms.${cfg.platform} or null;

  # nixpkgs' platform modules call make-disk-image without `contents`; its preparation script
  # then copies an empty list. Fill that list with the registration, or fail the evaluation
  # loudly if make-disk-image no longer writes it that way.
  withRegistration = img:
    let
      empty = [ "sources_=()" "targets_=()" "modes_=()" ];
      filled = [ "sources_=(${registration}/registration)" "targets_=(/nix/nix-path-registration)" "modes_=('')" ];
    in
    if lib.all (e: lib.hasInfix e (img.preVM or "")) empty
    then lib.overrideDerivation img (old: { preVM = lib.replaceStrings empty filled old.preVM; })
    else throw "factory.image: nixpkgs' make-disk-image no longer prepares contents as images.nix expects; cannot add /nix/nix-path-registration to the ${cfg.platform} image";

  # make-disk-image with the registration; extra: arguments of one image's own.
  image = format: extra: import (modulesPath + "/../lib/make-disk-image.nix") ({
    inherit config lib pkgs format partitionTableType;
    inherit (cfg) diskSize;
    name = "factory-image-${cfg.boot}-${format}";
    # a flake-based fleet: no channel in the image (and the registration stays exact)
    copyChannel = false;
    contents = [
      { source = "${registration}/registration"; target = "/nix/nix-path-registration"; }
    ];
  } // extra);

  # OpenStack: as nixpkgs' openstack-image.nix (qcow2, 1 GiB to spare), without the channel.
  openstackImage = image "qcow2" { name = "factory-image-openstack"; additionalSpace = "1024M"; };
in
{
  options.factory.image = {
    boot = lib.mkOption {
      type = lib.types.enum [ "efi" "bios" "hybrid" ];
      default = "hybrid";
      description = "How the image boots: UEFI, BIOS, or both (hybrid GPT).";
    };
    platform = lib.mkOption {
      type = lib.types.enum ([ "generic" ] ++ lib.attrNames platforms);
      default = "generic";
      description = ''
        "generic": this module's own qcow2 and raw images. A platform of
        nixos/image-platforms.nix: that platform's nixpkgs module (imported beside this one) lays out
        the image, and system.build.factoryImage.<platform> is its image, with the registration.
      '';
    };
    diskSize = lib.mkOption {
      type = lib.types.either (lib.types.enum [ "auto" ]) lib.types.ints.positive;
      default = "auto";
      description = "The image size in MiB, or \"auto\" (the closure plus 512 MiB).";
    };
  };

  config = lib.mkMerge [
    {
      assertions = [
        {
          assertion = platform != null -> cfg.boot == platform.boot;
          message = "factory.image.boot is \"${cfg.boot}\", but the ${cfg.platform} image boots with \"${platform.boot or ""}\".";
        }
        {
          assertion = platform != null -> platform.image == null || config.system.build ? ${platform.image or "x"};
          message = "factory.image.platform = \"${cfg.platform}\" needs nixpkgs' ${platform.module or ""} imported beside images.nix.";
        }
      ];
    }

    (lib.mkIf generic {
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

      system.build.factoryImage = lib.genAttrs [ "qcow2" "raw" ] (format: image format { });
    })

    (lib.mkIf (!generic) {
      system.build.factoryImage.${cfg.platform} =
        if platform.image == null then openstackImage
        else withRegistration config.system.build.${platform.image};
    })
  ];
}
