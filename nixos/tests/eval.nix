# Evaluation cases for nixos/tests/eval.sh:
#
#   nix-instantiate --eval --strict --readonly-mode nixos/tests/eval.nix \
#     --arg nixpkgs /path/to/nixpkgs --argstr case scripted-overlay
#
# Each case yields a .drv path (forcing toplevel.drvPath runs every NixOS assertion and
# instantiates the initrd) after checking a few things the modules must have produced. The
# cases named mistake-* must FAIL to evaluate.
{ nixpkgs, case }:

let
  lib = import (nixpkgs + "/lib");
  system = "x86_64-linux";

  # Only for a nixpkgs tree without hackage-packages.nix (the vendored 24.05 tree of the notes):
  # writeShellApplication's shellcheck step cannot evaluate there.
  noHackage = !builtins.pathExists (nixpkgs + "/pkgs/development/haskell-modules/hackage-packages.nix");
  evalFixes = {
    nixpkgs.overlays = lib.optional noHackage
      (final: prev: { shellcheck-minimal = { compiler.meta.platforms = [ ]; }; });
  };

  # A VM that boots from /dev/vda, without the factory image's layout.
  vm = {
    fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; };
    boot.loader.grub.device = "/dev/vda";
    system.stateVersion = "24.05";
  };

  nixos = modules: import (nixpkgs + "/nixos/lib/eval-config.nix") {
    inherit system;
    modules = [ evalFixes ] ++ modules;
  };

  factoryInit = ../modules/factory-init.nix;
  syncConfig = ../modules/sync-config.nix;

  check = cond: msg: if cond then true else throw "check failed: ${msg}";

  toplevel = c: checks:
    assert lib.all lib.id checks; c.config.system.build.toplevel.drvPath;

  # The initrd's /etc/vm-config.json, as data.
  embeddedJson = source: builtins.fromJSON source.text;

  withInitrd = { systemd, extra ? { } }: nixos [
    vm
    factoryInit
    {
      boot.initrd.systemd.enable = systemd;
      boot.initrd.factoryInit = {
        enable = true;
        embeddedConfig = { repo = "git@git.example.org:fleet.git"; "vm.branch" = "main"; };
      } // extra;
    }
  ];

  scriptedChecks = c: extra:
    let
      json = embeddedJson c.config.boot.initrd.extraFiles."/etc/vm-config.json".source;
    in
    [
      (check (lib.hasInfix "factory-init --root=\"$targetRoot\"" c.config.boot.initrd.postMountCommands)
        "postMountCommands runs factory-init")
      (check (lib.hasInfix "factory-init" c.config.boot.initrd.extraUtilsCommands)
        "extraUtilsCommands copies factory-init")
      (check (json.branch == "main" && json.repo == "git@git.example.org:fleet.git")
        "embedded config keeps stage-2 keys, without vm.")
      (check (json.persist == "auto" && json.luks == "tpm2,credential,key,keyfile,passphrase")
        "embedded config carries the control keys")
      (check (lib.all (m: lib.elem m c.config.boot.initrd.availableKernelModules)
        [ "dm_crypt" "btrfs" "overlay" "af_alg" "algif_skcipher" "sha256_ssse3" ])
        "kernel modules are in the initrd")
    ] ++ extra json;

  systemdChecks = c: extra:
    let
      unit = c.config.boot.initrd.systemd.services.factory-init;
      json = embeddedJson c.config.boot.initrd.systemd.contents."/etc/vm-config.json".source;
    in
    [
      (check (unit.serviceConfig.ExecStart == "/bin/factory-init --root=/sysroot --config /etc/vm-config.json")
        "systemd stage 1 runs factory-init on /sysroot")
      (check (lib.elem "initrd-fs.target" unit.before && lib.elem "sysroot.mount" unit.after)
        "ordered after sysroot.mount, before initrd-fs.target")
      (check (c.config.boot.initrd.systemd.extraBin ? factory-init) "binary in the systemd initrd")
      (check (c.config.boot.initrd.postMountCommands == "") "no scripted hooks with systemd stage 1")
      (check (json.repo == "git@git.example.org:fleet.git") "embedded config in the systemd initrd")
    ] ++ extra json;

  registers = c: c.config.systemd.services ? factory-init-register-store;

  cases = {
    package =
      let p = (import nixpkgs { inherit system; }).callPackage ../package.nix { }; in
      assert check (lib.elem "main.c" p.passthru.srcFiles) "SRC list read from the Makefile";
      p.drvPath;

    scripted-overlay =
      let c = withInitrd { systemd = false; extra.mountOptions = [ "compress=zstd" "noatime" ]; }; in
      toplevel c (scriptedChecks c (json: [
        (check (json.store == "overlay" && json."persist.options" or "" == "noatime")
          "overlay mode, extra mount options")
        (check (registers c) "stage 2 registers the factory paths (Nix 2.18)")
        (check (!c.config.nix.optimise.automatic && c.config.nix.settings.auto-optimise-store)
          "no nix-store --optimise over a plain overlay")
      ]));

    systemd-overlay =
      let c = withInitrd { systemd = true; extra.luks = { methods = [ "tpm2" "passphrase" ]; tries = 5; }; }; in
      toplevel c (systemdChecks c (json: [
        (check (json.luks == "tpm2,passphrase" && json."luks.tries" == "5") "luks options")
      ]));

    scripted-off =
      let c = withInitrd { systemd = false; extra.storeMode = "off"; }; in
      toplevel c (scriptedChecks c (json: [
        (check (json.store == "off") "store off")
        (check (!(json ? "persist.options")) "compress=zstd (the default) is not repeated")
        (check (!registers c) "nothing to register with /nix left alone")
      ]));

    systemd-bind =
      let c = withInitrd { systemd = true; extra = { storeMode = "bind"; device = "LABEL=persist"; timeout = 30; encrypted = "yes"; }; }; in
      toplevel c (systemdChecks c (json: [
        (check (json.store == "bind" && json.persist == "LABEL=persist" && json."persist.timeout" == "30")
          "bind mode, device, timeout")
        (check (json."persist.encrypted" == "yes") "encrypted reaches vm.persist.encrypted")
        (check (registers c) "bind mode registers the factory paths too")
      ]));

    # Nix >= 2.22 (nixpkgs 24.05 has nixVersions.nix_2_24): the local-overlay-store.
    local-overlay-store =
      let
        c = nixos [ vm factoryInit ({ pkgs, ... }: {
          nix.package = pkgs.nixVersions.nix_2_24;
          boot.initrd.factoryInit.enable = true;
        }) ];
        s = c.config.nix.settings;
      in
      toplevel c [
        (check (lib.hasPrefix "local-overlay://?lower-store=local%3Freal%3D/nix/.ro-store/store" s.store
          && lib.hasInfix "upper-layer=/persist/nix/upper/store" s.store)
          "nix.settings.store is the local overlay store")
        (check (lib.elem "local-overlay-store" s.experimental-features) "experimental feature on")
        (check (!registers c) "the overlay store reads the factory database itself")
      ];

    # The stage-2 module alone, without sops-nix, then with a stand-in sops module.
    sync-config =
      let
        c = nixos [ vm syncConfig { services.sync-config.enable = true; networking.hostName = "web-1"; } ];
        withSops = nixos [
          vm
          syncConfig
          { options.sops.age.keyFile = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; }; }
          { services.sync-config.enable = true; }
        ];
        t = c.config.systemd.timers.sync-config.timerConfig;
      in
      toplevel c [
        (check (t.OnBootSec == "10m" && t.OnUnitActiveSec == "1h" && t.RandomizedDelaySec == "10m") "timer")
        (check (c.config.system.autoUpgrade.flake == "/persist/nixos#web-1" && c.config.system.autoUpgrade.allowReboot)
          "autoUpgrade from /persist/nixos#<hostname>")
        (check (c.config.boot.loader.grub.configurationLimit == 5) "5 boot entries")
        (check (c.config.nix.gc.automatic && c.config.nix.gc.options == "--delete-older-than 14d") "nix.gc")
        (check (lib.hasInfix "pull --ff-only" c.config.systemd.services.sync-config.script) "git pull --ff-only")
        (check (lib.any (p: (p.name or "") == "vm-cutover") c.config.environment.systemPackages) "vm-cutover installed")
        (check (withSops.config.sops.age.keyFile == "/persist/keys/host.agekey") "sops age key on /persist")
        (check (lib.isString withSops.config.system.build.toplevel.drvPath) "evaluates with sops")
      ];

    # The factory system and its images (make-disk-image).
    image-qcow2-efi = factoryImage "efi" "qcow2";
    image-qcow2-bios = factoryImage "bios" "qcow2";
    image-raw = factoryImage "hybrid" "raw";

    # flake.nix's outputs, with this nixpkgs tree standing in for the nixpkgs input.
    flake =
      let
        nixpkgsFlake = (import (nixpkgs + "/flake.nix")).outputs { self = nixpkgsFlake // { outPath = nixpkgs; }; };
        flake = (import ../../flake.nix).outputs { self = flake // { outPath = ../..; }; nixpkgs = nixpkgsFlake; };
        factory = flake.nixosConfigurations.factory.extendModules { modules = [ evalFixes ]; };
      in
      assert check (lib.attrNames flake.nixosModules == [ "default" "factory-base" "factory-init" "images" "sync-config" ]) "nixosModules";
      assert check (lib.attrNames flake.nixosConfigurations == [ "factory" "factory-bios" "factory-efi" ]) "nixosConfigurations";
      assert check (flake.packages.${system}.default.drvPath == flake.packages.${system}.factory-init.drvPath) "default package";
      factory.config.system.build.toplevel.drvPath;

    # ---- deliberate mistakes: each must fail ------------------------------------------------
    mistake-store-mode = (withInitrd { systemd = false; extra.storeMode = "bogus"; }).config.system.build.toplevel.drvPath;
    mistake-key-in-config = (nixos [ vm factoryInit {
      boot.initrd.factoryInit = { enable = true; embeddedConfig."vm.luks.key" = "hunter2"; };
    } ]).config.system.build.toplevel.drvPath;
    mistake-scripted-hook-with-systemd = (nixos [ vm factoryInit {
      boot.initrd.systemd.enable = true;
      boot.initrd.factoryInit.enable = true;
      boot.initrd.postDeviceCommands = "echo a scripted hook";
    } ]).config.system.build.toplevel.drvPath;
  };

  factoryImage = boot: format:
    let
      c = nixos [ ../factory-base.nix ../images.nix { factory.image.boot = boot; } ];
      img = c.config.system.build.factoryImage.${format};
    in
    assert check (c.config.boot.initrd.factoryInit.enable) "factory-base turns factory-init on";
    assert check (lib.elem "console=ttyS0,115200" c.config.boot.kernelParams) "serial console";
    assert check (c.config.networking.useDHCP) "DHCP";
    assert check ((builtins.fromJSON c.config.boot.initrd.extraFiles."/etc/vm-config.json".source.text).branch == "main") "embedded config";
    assert check (c.config.boot.loader.grub.efiSupport == (boot != "bios")) "boot loader fits the image";
    img.drvPath;
in
cases.${case} or (throw "unknown case ${case}; cases: ${lib.concatStringsSep " " (lib.attrNames cases)}")
