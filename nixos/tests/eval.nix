# Evaluation cases for nixos/tests/eval.sh:
#
#   nix-instantiate --eval --strict --readonly-mode nixos/tests/eval.nix \
#     --arg nixpkgs /path/to/nixpkgs --argstr case scripted-overlay
#
# Each case yields a .drv path (forcing toplevel.drvPath runs every NixOS assertion and
# instantiates the initrd) after checking a few things the modules must have produced. The
# cases named mistake-* must FAIL to evaluate. systemd stage 1 is the main case (NixOS 26.05's
# default, and factory-base's); the scripted stage 1 keeps its own cases while NixOS has it.
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

  withInitrd = { systemd ? true, extra ? { }, modules ? [ ] }: nixos ([
    vm
    factoryInit
    {
      boot.initrd.systemd.enable = systemd;
      boot.initrd.factoryInit = {
        enable = true;
        embeddedConfig = { repo = "git@git.example.org:fleet.git"; "vm.branch" = "main"; };
      } // extra;
    }
  ] ++ modules);

  # The unit as nixos/factory-init.service.in rendered with the module's values, computed here
  # independently of the module (nixos/tests/eval.sh renders it with nixos/render-unit too).
  unitSubstitutions = { factoryInit = "/bin/factory-init"; configFile = "/etc/vm-config.json"; };
  unitTemplate = builtins.readFile ../factory-init.service.in;
  unitExpected = lib.replaceStrings
    [ "@factoryInit@" "@configFile@" ] [ unitSubstitutions.factoryInit unitSubstitutions.configFile ]
    unitTemplate;

  unitOf = c: c.config.boot.initrd.systemd.units."factory-init.service";
  # the drop-in factory-init.service.d/50-nixos.conf, or null
  dropInOf = c:
    let
      ps = lib.filter (p: (p.name or "") == "factory-init-service-dropin") c.config.boot.initrd.systemd.packages;
    in
    if ps == [ ] then null else (lib.head ps).text;

  secretsUnit = "initrd-nixos-copy-secrets.service";
  keyFile = "/etc/secrets/persist.key"; # never read: nothing is built

  # A minimal NixOS stand-in without the scripted stage 1 (as NixOS 26.11 will be): it declares
  # only the options factory-init.nix reads or sets, and none of postMountCommands,
  # extraUtilsCommands[Test], extraFiles, so defining any of them would fail as it will there.
  withoutScripted = systemd:
    let
      c = lib.evalModules {
        modules = [
          factoryInit
          ({ lib, ... }: with lib; let any = mkOption { type = types.lazyAttrsOf types.anything; default = { }; }; in {
            options = {
              assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
              warnings = mkOption { type = types.listOf types.str; default = [ ]; };
              boot.initrd = {
                availableKernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
                secrets = any;
                luks.devices = any;
                systemd = {
                  enable = mkOption { type = types.bool; };
                  extraBin = any;
                  contents = any;
                  units = any;
                  packages = mkOption { type = types.listOf types.package; default = [ ]; };
                };
              };
              boot.kernelPackages = mkOption { type = types.raw; };
              fileSystems = any;
              nix = {
                package = mkOption { type = types.raw; };
                settings = any;
                optimise.automatic = mkOption { type = types.bool; default = true; };
              };
              systemd.services = any;
              services.prometheus.exporters.node = {
                enable = mkOption { type = types.bool; default = false; };
                enabledCollectors = mkOption { type = types.listOf types.str; default = [ ]; };
                extraFlags = mkOption { type = types.listOf types.str; default = [ ]; };
              };
            };
            config = {
              _module.args.pkgs = pkgs;
              boot.initrd.systemd.enable = systemd;
              boot.kernelPackages = pkgs.linuxPackages;
              nix.package = pkgs.nix;
              boot.initrd.factoryInit.enable = true;
            };
          })
        ];
      };
      failed = map (a: a.message) (lib.filter (a: !a.assertion) c.config.assertions);
    in
    if failed != [ ] then throw "Failed assertions:\n- ${lib.concatStringsSep "\n- " failed}" else c;

  pkgs = import nixpkgs { inherit system; inherit (evalFixes.nixpkgs) overlays; };

  # boot.kernelPackages with another kernel version (only the version: nothing is built)
  kernelVersion = v: { pkgs, ... }: {
    boot.kernelPackages = pkgs.linuxPackages.extend (self: super: {
      kernel = let k = super.kernel // { version = v; override = _: k; }; in k;
    });
  };
  kernelModulesOf = modules: (nixos ([ vm factoryInit { boot.initrd.factoryInit.enable = true; } ] ++ modules)).config.boot.initrd.availableKernelModules;

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

  # dropIn: the drop-in's text this configuration must have (null: none)
  systemdChecks = c: { dropIn ? null }: extra:
    let
      unit = unitOf c;
      json = embeddedJson c.config.boot.initrd.systemd.contents."/etc/vm-config.json".source;
    in
    [
      (check (unit.text == unitExpected) "the unit is exactly nixos/factory-init.service.in, rendered")
      (check (lib.hasInfix "ExecStart=/bin/factory-init --root=/sysroot --config /etc/vm-config.json\n" unit.text)
        "systemd stage 1 runs factory-init on /sysroot")
      (check (lib.hasInfix "Before=initrd-find-nixos-closure.service initrd-find-etc.service\n" unit.text)
        "ordered before NixOS's closure and /etc lookups under /sysroot")
      (check (unit.wantedBy == [ "initrd-fs.target" ]) "wanted by initrd-fs.target")
      (check (!(c.config.boot.initrd.systemd.services ? factory-init)) "no second definition through services")
      (check (dropInOf c == dropIn) "drop-in: ${builtins.toJSON (dropInOf c)}, expected ${builtins.toJSON dropIn}")
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

    # ---- systemd stage 1 (the main case) ---------------------------------------------------
    systemd-overlay =
      let c = withInitrd { extra.luks = { methods = [ "tpm2" "passphrase" ]; tries = 5; }; }; in
      toplevel c (systemdChecks c { } (json: [
        (check (json.luks == "tpm2,passphrase" && json."luks.tries" == "5") "luks options")
        (check (json.persist == "auto" && json.store == "overlay" && !(json ? "persist.opened")) "factory-init unlocks")
        (check (c.config.boot.initrd.luks.devices == { }) "NixOS opens no LUKS volume")
        (check (lib.elem "sha256_ssse3" c.config.boot.initrd.availableKernelModules) "sha256_ssse3 on 6.6")
        (check (registers c) "stage 2 registers the factory paths (Nix 2.18)")
      ]));

    # node-exporter on: its textfile collector reads stage 1's metrics directory.
    metrics =
      let
        c = withInitrd { modules = [ { services.prometheus.exporters.node.enable = true; } ]; };
        node = c.config.services.prometheus.exporters.node;
      in
      assert check (c.config.boot.initrd.factoryInit.metrics.textfileCollector) "on with node-exporter";
      assert check (lib.elem "textfile" node.enabledCollectors) "textfile collector";
      assert check (lib.elem "--collector.textfile.directory=/run/factory-init/metrics" node.extraFlags) "its directory";
      assert check (!(withInitrd { }).config.boot.initrd.factoryInit.metrics.textfileCollector) "off without";
      assert check (lib.hasInfix "--collector.textfile.directory=/run/factory-init/metrics"
        c.config.systemd.services.prometheus-node-exporter.serviceConfig.ExecStart) "in ExecStart";
      c.config.system.build.toplevel.drvPath;

    # Zero-touch provisioning: the control keys in the embedded config and mkfs.btrfs in the
    # initrd, for both stage 1s; refused next to systemd-cryptsetup.
    provision =
      let
        c = withInitrd { extra.provision = { enable = true; pcrs = "7"; }; };
        json = embeddedJson c.config.boot.initrd.systemd.contents."/etc/vm-config.json".source;
        plain = withInitrd { };
        plainJson = embeddedJson plain.config.boot.initrd.systemd.contents."/etc/vm-config.json".source;
        scripted = withInitrd { systemd = false; extra.provision.enable = true; };
      in
      assert check (json."persist.provision" == "1" && json."persist.provision.pcrs" == "7") "control keys";
      assert check (lib.hasSuffix "/bin/mkfs.btrfs" c.config.boot.initrd.systemd.extraBin."mkfs.btrfs") "mkfs.btrfs (systemd)";
      assert check (!(plainJson ? "persist.provision") && !(plain.config.boot.initrd.systemd.extraBin ? "mkfs.btrfs")) "off by default";
      assert check (lib.hasInfix "/bin/mkfs.btrfs" scripted.config.boot.initrd.extraUtilsCommands) "mkfs.btrfs (scripted)";
      assert check (lib.elem "persist.provision" c.config.boot.initrd.factoryInit.package.passthru.configKeys) "the package knows the key";
      c.config.system.build.toplevel.drvPath;

    systemd-bind =
      let c = withInitrd { extra = { storeMode = "bind"; device = "LABEL=persist"; timeout = 30; encrypted = "yes"; }; }; in
      toplevel c (systemdChecks c { } (json: [
        (check (json.store == "bind" && json.persist == "LABEL=persist" && json."persist.timeout" == "30")
          "bind mode, device, timeout")
        (check (json."persist.encrypted" == "yes") "encrypted reaches vm.persist.encrypted")
        (check (registers c) "bind mode registers the factory paths too")
      ]));

    # A key file: factory-init reads it once initrd-nixos-copy-secrets has put it in place.
    systemd-keyfile =
      let c = withInitrd { extra.luks.keyFile = keyFile; }; in
      toplevel c (systemdChecks c { dropIn = "[Unit]\nWants=${secretsUnit}\nAfter=${secretsUnit}\n"; } (json: [
        (check (json."luks.keyfile" == "/etc/factory-init/keyfile") "vm.luks.keyfile")
        (check (c.config.boot.initrd.secrets."/etc/factory-init/keyfile" == keyFile) "the key file is an initrd secret")
        (check (c.config.boot.initrd.systemd.services ? initrd-nixos-copy-secrets) "24.05 has the unit it is ordered after")
      ]));

    # unlockWith = "systemd-cryptsetup": NixOS's crypttab opens the disk, factory-init takes it.
    systemd-cryptsetup =
      let
        c = withInitrd {
          extra = {
            unlockWith = "systemd-cryptsetup";
            device = "LABEL=persist";
            luks = { methods = [ "tpm2" "keyfile" ]; keyFile = keyFile; tries = 2; };
          };
        };
        dev = c.config.boot.initrd.luks.devices.persist;
        crypttab = c.config.boot.initrd.systemd.contents."/etc/crypttab".source.text;
        knows = lib.elem "persist.opened" (c.config.boot.initrd.factoryInit.package.passthru.configKeys or [ ]);
        warned = lib.any (lib.hasInfix "does not know\nthe config key persist.opened") c.config.warnings;
        cryptsetupUnit = "systemd-cryptsetup@persist.service";
      in
      toplevel c (systemdChecks c { dropIn = "[Unit]\nWants=${cryptsetupUnit}\nAfter=${cryptsetupUnit}\n"; } (json: [
        (check (json."persist.opened" == "/dev/mapper/persist") "persist.opened in the embedded config")
        (check (lib.all (k: !(json ? ${k})) [ "persist" "persist.encrypted" "luks" "luks.keyfile" "luks.tries" ])
          "no unlock settings for factory-init")
        (check (dev.device == "LABEL=persist" && dev.keyFile == "/etc/factory-init/keyfile") "luks.devices.persist")
        (check (crypttab == "persist LABEL=persist /etc/factory-init/keyfile tpm2-device=auto,headless=true,x-systemd.device-timeout=10s,tries=2\n")
          "crypttab: ${crypttab}")
        (check (warned == !knows) "a warning exactly while the package lacks persist.opened")
      ]));

    # The sizes of the kernel module list: 24.05's 6.1, 6.6 (default), 6.11, and the version alone
    # set to 6.12, 6.18, 7.2 (nothing is built; the list is what the closure builder gets).
    kernel-modules =
      let
        lists = {
          "6.1" = kernelModulesOf [ ({ pkgs, ... }: { boot.kernelPackages = pkgs.linuxPackages_6_1; }) ];
          "6.6" = kernelModulesOf [ ];
          "6.11" = kernelModulesOf [ ({ pkgs, ... }: { boot.kernelPackages = pkgs.linuxPackages_6_11; }) ];
          "6.12" = kernelModulesOf [ (kernelVersion "6.12.60") ];
          "6.18" = kernelModulesOf [ (kernelVersion "6.18.2") ];
          "7.2" = kernelModulesOf [ (kernelVersion "7.2.0") ];
        };
        has = v: m: lib.elem m lists.${v};
        c = withInitrd { modules = [ ({ pkgs, ... }: { boot.kernelPackages = pkgs.linuxPackages_6_1; }) ]; };
      in
      toplevel c [
        (check (lib.all (v: has v "sha256_ssse3") [ "6.1" "6.6" "6.11" "6.12" ]) "sha256_ssse3 up to 6.12")
        (check (lib.all (v: !has v "sha256_ssse3") [ "6.18" "7.2" ]) "no sha256_ssse3 on 6.18 and 7.x")
        (check (lib.all (v: lib.all (has v) [ "xts" "dm_crypt" "btrfs" "overlay" "af_alg" "algif_skcipher" ]) (lib.attrNames lists))
          "the rest everywhere")
        (check (lib.versions.majorMinor c.config.boot.kernelPackages.kernel.version == "6.1") "a whole system on 6.1")
      ];

    # Where NixOS has no scripted stage 1 (26.11): the module defines none of its options.
    without-scripted-options =
      let c = withoutScripted true; in
      assert check (!(c.options.boot.initrd ? postMountCommands)) "a NixOS without postMountCommands";
      assert check ((unitOf c).text == unitExpected) "the unit";
      assert check (c.config.boot.initrd.availableKernelModules != [ ]) "kernel modules";
      builtins.seq c.config.warnings "evaluates without the scripted options; the unit as rendered";

    # For nixos/tests/eval.sh's unit-render: the shipped text and the values it was rendered with.
    unit-text = { text = (unitOf (withInitrd { })).text; substitutions = unitSubstitutions; };

    # NixOS's qemu-vm with factory-init's /nix left alone: fine.
    qemu-vm-store-off =
      let c = withInitrd { extra.storeMode = "off"; modules = [ (nixpkgs + "/nixos/modules/virtualisation/qemu-vm.nix") ]; }; in
      toplevel c [
        (check c.config.virtualisation.writableStore "qemu-vm's store overlay is on")
        (check (c.config.fileSystems ? "/nix/.ro-store") "qemu-vm mounts /nix/.ro-store")
      ];

    # ---- scripted stage 1 (while NixOS has it) -------------------------------------------------
    scripted-overlay =
      let c = withInitrd { systemd = false; extra.mountOptions = [ "compress=zstd" "noatime" ]; }; in
      toplevel c (scriptedChecks c (json: [
        (check (json.store == "overlay" && json."persist.options" or "" == "noatime")
          "overlay mode, extra mount options")
        (check (registers c) "stage 2 registers the factory paths (Nix 2.18)")
        (check (!c.config.nix.optimise.automatic && c.config.nix.settings.auto-optimise-store)
          "no nix-store --optimise over a plain overlay")
        (check (c.config.boot.initrd.systemd.packages == [ ]) "no systemd units")
      ]));

    scripted-off =
      let c = withInitrd { systemd = false; extra.storeMode = "off"; }; in
      toplevel c (scriptedChecks c (json: [
        (check (json.store == "off") "store off")
        (check (!(json ? "persist.options")) "compress=zstd (the default) is not repeated")
        (check (!registers c) "nothing to register with /nix left alone")
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
        (check (lib.all (f: lib.elem f s.experimental-features) [ "local-overlay-store" "read-only-local-store" ])
          "experimental features on: the overlay store, and the read-only lower store its URL opens")
        (check (registers c) "a new image's removed paths are dropped from the upper database")
        (check (!(lib.hasInfix "--load-db" c.config.systemd.services.factory-init-register-store.script))
          "the overlay store reads the new paths from the factory database itself")
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
    image-qcow2-efi = factoryImage "efi" "qcow2" { };
    image-qcow2-bios = factoryImage "bios" "qcow2" { systemd = false; }; # the scripted stage 1
    image-raw = factoryImage "hybrid" "raw" { };
    # nixpkgs' platform images (nixos/image-platforms.nix)
    image-hyperv = platformImage "hyperv";
    image-vmware = platformImage "vmware";
    image-virtualbox = platformImage "virtualbox";
    image-openstack = platformImage "openstack";
    image-proxmox = platformImage "proxmox";

    # flake.nix's outputs, with this nixpkgs tree standing in for the nixpkgs input.
    flake =
      let
        nixpkgsFlake = (import (nixpkgs + "/flake.nix")).outputs { self = nixpkgsFlake // { outPath = nixpkgs; }; };
        flake = (import ../../flake.nix).outputs { self = flake // { outPath = ../..; }; nixpkgs = nixpkgsFlake // { outPath = nixpkgs; }; };
        factory = flake.nixosConfigurations.factory.extendModules { modules = [ evalFixes ]; };
      in
      assert check (lib.attrNames flake.nixosModules == [ "default" "factory-base" "factory-init" "images" "sync-config" ]) "nixosModules";
      assert check (lib.attrNames flake.nixosConfigurations == [ "factory" "factory-bios" "factory-efi" "factory-hyperv"
        "factory-openstack" "factory-proxmox" "factory-virtualbox" "factory-vmware" ]) "nixosConfigurations";
      # the seeds' eight image names (factory-base: the system the images carry)
      assert check (lib.all (n: flake.packages.${system} ? ${n}) [ "factory-base" "factory-qcow" "factory-raw"
        "factory-hyperv" "factory-vmware" "factory-virtualbox" "factory-openstack" "factory-proxmox" ]) "the eight image outputs";
      assert check (flake.packages.${system}.default.drvPath == flake.packages.${system}.factory-init.drvPath) "default package";
      # a platform system as the flake composes it (nixpkgs' module by the input's path)
      assert check (lib.hasSuffix ".drv" (flake.nixosConfigurations.factory-proxmox.extendModules { modules = [ evalFixes ]; })
        .config.system.build.factoryImage.proxmox.drvPath) "factory-proxmox through the flake";
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
    mistake-split-auto = (withInitrd { extra.unlockWith = "systemd-cryptsetup"; }).config.system.build.toplevel.drvPath;
    mistake-provision-split = (withInitrd {
      extra = { unlockWith = "systemd-cryptsetup"; device = "/dev/vdb"; provision.enable = true; };
    }).config.system.build.toplevel.drvPath;
    mistake-split-scripted = (withInitrd {
      systemd = false;
      extra = { unlockWith = "systemd-cryptsetup"; device = "/dev/vdb"; };
    }).config.system.build.toplevel.drvPath;
    # the same disk under two names: LABEL=persist and /dev/disk/by-label/persist
    mistake-luks-fight = (withInitrd {
      extra.device = "LABEL=persist";
      modules = [ { boot.initrd.luks.devices.data.device = "/dev/disk/by-label/persist"; } ];
    }).config.system.build.toplevel.drvPath;
    mistake-qemu-vm-store = (withInitrd {
      modules = [ (nixpkgs + "/nixos/modules/virtualisation/qemu-vm.nix") ];
    }).config.system.build.toplevel.drvPath;
    mistake-scripted-without-options = (withoutScripted false).config.boot.initrd.systemd.units;
  };

  # systemd: false for the scripted stage 1 (factory-base's default is systemd stage 1)
  factoryImage = boot: format: { systemd ? true }:
    let
      c = nixos [ ../factory-base.nix ../images.nix { factory.image.boot = boot; }
        (lib.optionalAttrs (!systemd) { boot.initrd.systemd.enable = false; }) ];
      img = c.config.system.build.factoryImage.${format};
      initrd = c.config.boot.initrd;
      embedded = if systemd then initrd.systemd.contents."/etc/vm-config.json" else initrd.extraFiles."/etc/vm-config.json";
    in
    assert check (c.config.boot.initrd.factoryInit.enable) "factory-base turns factory-init on";
    assert check (initrd.systemd.enable == systemd) "stage 1: systemd ${lib.boolToString systemd}";
    assert check (systemd -> (unitOf c).text == unitExpected) "the unit";
    assert check (lib.elem "console=ttyS0,115200" c.config.boot.kernelParams) "serial console";
    assert check (c.config.networking.useNetworkd) "networkd, for vm.network_static";
    assert check (c.config.systemd.network.networks."99-factory-dhcp".networkConfig.DHCP == "yes") "DHCP as the fallback";
    assert check (c.config.environment.etc ? "systemd/network/99-factory-dhcp.network") "the fallback .network file";
    assert check ((builtins.fromJSON embedded.source.text).branch == "main") "embedded config";
    assert check (c.config.boot.loader.grub.efiSupport == (boot != "bios")) "boot loader fits the image";
    img.drvPath;

  # A platform image: nixpkgs' module for it beside the factory layout. The checks are where the
  # two could clash: the root factory-init switches to, the boot loader's disk (never the data
  # disk), the ESP, the disk controller's driver in the initrd (factory-init finds the data disk on
  # the same bus), and the registration nixpkgs' module does not copy in by itself.
  platformImage = name:
    let
      p = (import ../image-platforms.nix).${name};
      c = nixos [ ../factory-base.nix ../images.nix (nixpkgs + "/nixos/modules/${p.module}")
        { factory.image = { platform = name; inherit (p) boot; }; } ];
      cfg = c.config;
      img = cfg.system.build.factoryImage.${name};
      grub = cfg.boot.loader.grub;
      efi = p.boot != "bios";
      wrong = nixos [ ../factory-base.nix ../images.nix { factory.image.platform = name; } ];
    in
    assert check (cfg.boot.initrd.factoryInit.enable && cfg.boot.initrd.systemd.enable) "factory-init in systemd stage 1";
    assert check (cfg.fileSystems."/".device == "/dev/disk/by-label/nixos" && cfg.fileSystems."/".fsType == "ext4") "root: the image's ext4 labelled nixos";
    assert check (!(cfg.fileSystems ? "/persist") && !(cfg.fileSystems ? "/nix")) "the platform mounts neither /persist nor /nix";
    assert check (grub.enable && grub.efiSupport == efi) "GRUB, EFI ${lib.boolToString efi}";
    assert check (lib.all (d: d == "nodev" || lib.elem d [ "/dev/vda" "/dev/sda" ]) (grub.devices ++ [ grub.device ])) "the boot loader goes on the first disk, never the data disk";
    assert check (efi == (cfg.fileSystems ? "/boot" && cfg.fileSystems."/boot".device == "/dev/disk/by-label/ESP")) "an ESP on /boot exactly with EFI";
    assert check (lib.elem p.disk (cfg.boot.initrd.availableKernelModules ++ cfg.boot.initrd.kernelModules)) "${p.disk} in the initrd";
    assert check (lib.elem "console=ttyS0,115200" cfg.boot.kernelParams) "serial console";
    assert check (lib.hasInfix "/nix/nix-path-registration" (img.preVM or "")) "the image carries /nix/nix-path-registration";
    assert check (lib.any (a: !a.assertion && lib.hasInfix "but the ${name} image boots with" a.message) wrong.config.assertions)
      "images.nix refuses a boot mode the platform does not use";
    assert check (p.image == null || lib.any (a: !a.assertion && lib.hasInfix "needs nixpkgs' ${p.module}" a.message) wrong.config.assertions)
      "images.nix refuses a platform whose module is not imported";
    img.drvPath;
in
cases.${case} or (throw "unknown case ${case}; cases: ${lib.concatStringsSep " " (lib.attrNames cases)}")
