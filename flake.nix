{
  description = "factory-init: a static stage-1 init for immutable factory VMs, with NixOS modules and images";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};

      # The factory system with its disk layout; boot: "efi", "bios" or "hybrid".
      factory = boot: nixpkgs.lib.nixosSystem {
        modules = [
          self.nixosModules.factory-base
          self.nixosModules.images
          { nixpkgs.hostPlatform = system; factory.image.boot = boot; }
        ];
      };
      image = name: format: self.nixosConfigurations.${name}.config.system.build.factoryImage.${format};

      # The factory system as a platform image of nixpkgs (nixos/image-platforms.nix).
      platforms = import ./nixos/image-platforms.nix;
      platformSystem = name: p: nixpkgs.lib.nixosSystem {
        modules = [
          self.nixosModules.factory-base
          self.nixosModules.images
          (nixpkgs.outPath + "/nixos/modules/${p.module}")
          { nixpkgs.hostPlatform = system; factory.image = { platform = name; inherit (p) boot; }; }
        ];
      };
      prefixed = f: nixpkgs.lib.mapAttrs' (name: p: nixpkgs.lib.nameValuePair "factory-${name}" (f name p)) platforms;
    in
    {
      packages.${system} = {
        factory-init = pkgs.callPackage ./nixos/package.nix { };
        default = self.packages.${system}.factory-init;
        factory-qcow2-efi = image "factory-efi" "qcow2";
        factory-qcow2-bios = image "factory-bios" "qcow2";
        factory-raw = image "factory" "raw"; # hybrid: boots with UEFI or BIOS
        factory-qcow = self.packages.${system}.factory-qcow2-efi;
        factory-base = self.nixosConfigurations.factory.config.system.build.toplevel; # the system itself
      } # factory-hyperv (.vhdx), -vmware (.vmdk), -virtualbox (.ova), -openstack (.qcow2), -proxmox (.vma.zst)
      // prefixed (name: _: image "factory-${name}" name);

      nixosModules = {
        factory-init = ./nixos/modules/factory-init.nix; # boot.initrd.factoryInit
        sync-config = ./nixos/modules/sync-config.nix; # services.sync-config, vm-cutover
        factory-base = ./nixos/factory-base.nix; # the factory system (imports both)
        images = ./nixos/images.nix; # factory.image, system.build.factoryImage
        default = self.nixosModules.factory-init;
      };

      nixosConfigurations = {
        factory = factory "hybrid";
        factory-efi = factory "efi";
        factory-bios = factory "bios";
      } // prefixed platformSystem;
    };
}
