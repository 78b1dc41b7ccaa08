# factory-init in a NixOS initrd (helper mode), plus what stage 2 needs for the /nix layout.
#
#   boot.initrd.factoryInit.enable = true;
#
# NixOS's stage 1 mounts the root as usual; factory-init then runs `--root=/mnt-root` (scripted
# stage 1, from postMountCommands) or `--root=/sysroot` (systemd stage 1, a oneshot before
# initrd-fs.target) and does only its /persist, /nix and config part. The options below become
# the initrd's /etc/vm-config.json (factory-init's embedded config, the lowest layer): vm.* on
# the kernel command line still overrides every one of them at boot.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkIf mkMerge types literalExpression;

  cfg = config.boot.initrd.factoryInit;
  systemdStage1 = config.boot.initrd.systemd.enable;

  methods = [ "tpm2" "credential" "key" "keyfile" "passphrase" ];

  # Where the key file lands in the initrd (factory-init's default vm.luks.keyfile).
  keyFileInInitrd = "/etc/factory-init/keyfile";

  # Keys factory-init reads for itself; set them through the options, not embeddedConfig.
  controlKeys = [
    "persist" "persist.timeout" "persist.options" "persist.encrypted" "store" "luks" "luks.keyfile" "luks.tries"
    "luks.timeout" "luks.tpm2.timeout"
  ];

  stripVm = name: lib.removePrefix "vm." name;
  embedded = lib.mapAttrs' (n: v: lib.nameValuePair (stripVm n) v) cfg.embeddedConfig;

  # factory-init always puts compress=zstd first; repeating it adds nothing.
  extraMountOptions = lib.filter (o: o != "compress=zstd") cfg.mountOptions;

  control = lib.filterAttrs (_: v: v != null) {
    persist = cfg.device;
    "persist.timeout" = toString cfg.timeout;
    "persist.encrypted" = cfg.encrypted;
    "persist.options" =
      if extraMountOptions == [ ] then null else lib.concatStringsSep "," extraMountOptions;
    store = cfg.storeMode;
    luks = lib.concatStringsSep "," cfg.luks.methods;
    "luks.keyfile" = if cfg.luks.keyFile == null then null else keyFileInInitrd;
    "luks.tries" = lib.mapNullable toString cfg.luks.tries;
    "luks.timeout" = lib.mapNullable toString cfg.luks.timeout;
    "luks.tpm2.timeout" = lib.mapNullable toString cfg.luks.tpm2Timeout;
  };

  configFile = pkgs.writeText "vm-config.json" (builtins.toJSON (embedded // control));

  nixVersion = lib.getVersion config.nix.package;
  storeModes = cfg.package.passthru.storeModes or [ "overlay" "off" ];

  # Nix's local-overlay-store (experimental, Nix >= 2.22): the factory store below, read-only,
  # with its own database; /persist/nix/upper/store above (the overlay covers /nix, not
  # /nix/store, hence check-mount=false). The lower store URL is percent-encoded inside ours.
  lowerStore = "local%3Freal%3D/nix/.ro-store/store%26state%3D/nix/.ro-store/var/nix%26read-only%3Dtrue";
  overlayStoreUrl = "local-overlay://?lower-store=${lowerStore}"
    + "&upper-layer=/persist/nix/upper/store&check-mount=false";

  registration = "/nix/.ro-store/nix-path-registration";
in
{
  options.boot.initrd.factoryInit = {
    enable = lib.mkEnableOption ''
      factory-init in the initrd: after the root is mounted it finds the data disk (LUKS2 with
      Btrfs, label "persist"), unlocks it, mounts it on /persist, lays an overlay over /nix and
      writes the merged vm.* config to /persist/config.json and /run/vm-config.json. Any failure
      leaves the factory system booting as it is; /run/factory-init/status.json says why
    '';

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nixos/package.nix { }";
      description = "The factory-init package; its binary must be statically linked.";
    };

    device = mkOption {
      type = types.strMatching "auto|/.+|(LABEL|UUID|PARTUUID|PARTLABEL)=.+";
      default = "auto";
      example = "LABEL=persist";
      description = ''
        The data disk (`vm.persist=`): `auto` names every LUKS or Btrfs volume labelled
        `persist` (else /dev/vdb), tried until one opens; or a /dev path, `LABEL=`, `UUID=`,
        `PARTUUID=`, `PARTLABEL=`.
      '';
    };

    encrypted = mkOption {
      type = types.enum [ "auto" "yes" "no" ];
      default = "auto";
      description = ''
        Must the data disk be LUKS2 (`vm.persist.encrypted=`)? `auto`: yes when `device` is
        `auto` (a label is easy to forge on a disk a stranger attaches), no for a named disk.
        `no` lets an unencrypted Btrfs become /persist under `auto` too.
      '';
    };

    timeout = mkOption {
      type = types.ints.between 0 3600;
      default = 10;
      description = "Seconds to wait for the data disk to appear (`vm.persist.timeout=`).";
    };

    mountOptions = mkOption {
      type = types.listOf (types.strMatching "[A-Za-z0-9=._:/+-]+");
      default = [ "compress=zstd" ];
      example = [ "compress=zstd:3" "noatime" ];
      description = ''
        Btrfs mount options for /persist (`vm.persist.options=`). factory-init always mounts
        with `compress=zstd` first and appends these, so a later option wins (`compress=zstd:3`,
        `compress=no`); `compress=zstd` itself is not repeated.
      '';
    };

    storeMode = mkOption {
      type = types.enum [ "overlay" "bind" "off" ];
      default = "overlay";
      description = ''
        What becomes of /nix (`vm.store=`). `overlay`: an overlayfs with the factory /nix below,
        /persist/nix/upper above (workdir /persist/nix/work) and the factory /nix also at
        /nix/.ro-store. `bind`: a complete copy of the factory store on /persist/nix, bound on
        /nix (needs a factory-init that implements it; a warning says when the package does
        not). `off`: /nix stays the factory's.
      '';
    };

    luks = {
      methods = mkOption {
        type = types.listOf (types.enum methods);
        default = methods;
        example = [ "tpm2" "passphrase" ];
        description = ''
          The unlock methods to try, in order (`vm.luks=`): `tpm2` (systemd-tpm2 tokens),
          `credential` (a system credential named vm.luks.key), `key` (`vm.luks.key=` on the
          command line), `keyfile` (see {option}`boot.initrd.factoryInit.luks.keyFile`),
          `passphrase` (typed on the console).
        '';
      };

      keyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/etc/secrets/persist.key";
        description = ''
          A key file to put in the initrd (through {option}`boot.initrd.secrets`, so it is not
          copied to the Nix store) at ${keyFileInInitrd}, for the `keyfile` method.
          Anyone who can read the initrd can read it.
        '';
      };

      tries = mkOption {
        type = types.nullOr (types.ints.between 1 10);
        default = null;
        description = "Passphrase prompts, and TPM2 PIN prompts per token, before giving up (`vm.luks.tries=`); null: factory-init's default, 3.";
      };

      timeout = mkOption {
        type = types.nullOr (types.ints.between 0 3600);
        default = null;
        description = ''
          Seconds to wait for a passphrase or TPM2 PIN to be typed, 0 for ever
          (`vm.luks.timeout=`); null: factory-init's default, 60.
        '';
      };

      tpm2Timeout = mkOption {
        type = types.nullOr (types.ints.between 0 3600);
        default = null;
        description = "Seconds to wait for the TPM when the disk has a TPM2 token (`vm.luks.tpm2.timeout=`); null: 2.";
      };
    };

    embeddedConfig = mkOption {
      type = types.attrsOf (types.oneOf [ types.str types.int types.bool ]);
      default = { };
      example = { branch = "main"; repo = "git@git.example.org:fleet.git"; };
      description = ''
        Defaults for the vm.* config handed to stage 2 (keys without "vm."), baked into the
        initrd as /etc/vm-config.json: the lowest layer, below /persist/config.json, system
        credentials and the kernel command line. Visible to anyone who can read the initrd or
        the Nix store: no secrets. factory-init's own keys come from the options above.
      '';
    };

    localOverlayStore = mkOption {
      type = types.bool;
      default = cfg.storeMode == "overlay" && lib.versionAtLeast nixVersion "2.22";
      defaultText = literalExpression
        ''storeMode == "overlay" && lib.versionAtLeast config.nix.package.version "2.22"'';
      description = ''
        Make stage 2's Nix use its experimental local-overlay-store on the overlay (the factory
        store at /nix/.ro-store as the read-only lower store, /persist/nix/upper/store as the
        upper layer), so Nix knows which paths belong to the factory image. Needs Nix 2.22 or
        later; Nix commands must then run as root (the store setting applies to everyone).
      '';
    };

    registerFactoryPaths = mkOption {
      type = types.bool;
      default = cfg.storeMode != "off" && !cfg.localOverlayStore;
      defaultText = literalExpression ''storeMode != "off" && !localOverlayStore'';
      description = ''
        At boot, load the factory image's store path registration
        (${registration}, written by nixos/images.nix) into the Nix database on
        /persist when it changed, so that the paths a newer factory image brings are valid, and
        forget the paths an older image had and this one lacks.
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.luks.methods != [ ] && lib.unique cfg.luks.methods == cfg.luks.methods;
          message = "boot.initrd.factoryInit.luks.methods must name each method at most once, and at least one.";
        }
        {
          assertion = !(embedded ? "luks.key");
          message = ''
            boot.initrd.factoryInit.embeddedConfig must not hold luks.key: the initrd and the Nix
            store are readable. Use boot.initrd.factoryInit.luks.keyFile, a TPM2 token or a
            system credential instead.
          '';
        }
        {
          assertion = lib.all (k: !(embedded ? ${k})) controlKeys;
          message = ''
            boot.initrd.factoryInit.embeddedConfig sets ${lib.concatStringsSep ", " (lib.filter (k: embedded ? ${k}) controlKeys)}:
            use the matching boot.initrd.factoryInit options (device, timeout, mountOptions,
            storeMode, luks.*) instead.
          '';
        }
        {
          assertion = cfg.localOverlayStore -> lib.versionAtLeast nixVersion "2.22";
          message = "boot.initrd.factoryInit.localOverlayStore needs Nix 2.22 or later (nix.package is ${nixVersion}).";
        }
        {
          assertion = cfg.localOverlayStore -> cfg.storeMode == "overlay";
          message = "boot.initrd.factoryInit.localOverlayStore only fits storeMode = \"overlay\".";
        }
      ];

      warnings = lib.optional (!(lib.elem cfg.storeMode storeModes)) ''
        boot.initrd.factoryInit.storeMode = "${cfg.storeMode}" is not implemented by this
        factory-init (it knows ${lib.concatStringsSep ", " storeModes}); it will use the overlay.
      '';

      # What factory-init loads itself (libkmod), in helper mode too; `factory-init --plan
      # --cmdline ""` ("modules") is the source of truth for this list.
      boot.initrd.availableKernelModules = [
        "virtio_pci" "virtio_blk" "qemu_fw_cfg" "tpm_tis" "tpm_crb" "ext4" "af_alg"
        "algif_skcipher" "dm_crypt" "xts" "btrfs" "overlay" "sha256_ssse3"
      ];

      boot.initrd.secrets = mkIf (cfg.luks.keyFile != null) {
        ${keyFileInInitrd} = cfg.luks.keyFile;
      };
    }

    # ---- scripted stage 1 ---------------------------------------------------------------
    (mkIf (!systemdStage1) {
      # Static, so it survives extra-utils' strip, nuke-refs and patchelf untouched.
      boot.initrd.extraUtilsCommands = ''
        copy_bin_and_libs ${cfg.package}/bin/factory-init
      '';
      boot.initrd.extraUtilsCommandsTest = ''
        $out/bin/factory-init --version
      '';
      boot.initrd.extraFiles."/etc/vm-config.json".source = configFile;
      # The root is mounted on $targetRoot (/mnt-root); factory-init never stops the boot.
      boot.initrd.postMountCommands = lib.mkAfter ''
        mkdir -p "$targetRoot/persist" 2>/dev/null || true
        factory-init --root="$targetRoot" --config /etc/vm-config.json || \
          echo "factory-init failed ($?); booting on the factory store"
      '';
    })

    # ---- systemd stage 1 -----------------------------------------------------------------
    (mkIf systemdStage1 {
      boot.initrd.systemd.extraBin.factory-init = "${cfg.package}/bin/factory-init";
      boot.initrd.systemd.contents."/etc/vm-config.json".source = configFile;
      boot.initrd.systemd.services.factory-init = {
        description = "factory-init: /persist, /nix and the VM config";
        wantedBy = [ "initrd-fs.target" ];
        requires = [ "sysroot.mount" ];
        after = [ "sysroot.mount" ];
        before = [ "initrd-fs.target" "initrd-nixos-activation.service" "initrd-switch-root.target" ];
        unitConfig = {
          DefaultDependencies = false;
          # also after a separate /nix file system, when there is one
          RequiresMountsFor = "/sysroot/nix";
        };
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStartPre = "-/bin/mkdir -p /sysroot/persist";
          ExecStart = "/bin/factory-init --root=/sysroot --config /etc/vm-config.json";
          # system credentials (SMBIOS, fw_cfg, the command line) named vm.*
          ImportCredential = "vm.*";
          StandardOutput = "journal+console";
          StandardError = "journal+console";
        };
      };
    })

    # ---- stage 2: Nix on the new /nix ----------------------------------------------------
    (mkIf cfg.localOverlayStore {
      nix.settings = {
        experimental-features = [ "local-overlay-store" ];
        store = overlayStoreUrl;
      };
    })

    (mkIf cfg.registerFactoryPaths {
      systemd.services.factory-init-register-store = {
        description = "Register the factory image's store paths with Nix";
        wantedBy = [ "sysinit.target" ];
        after = [ "local-fs.target" ];
        before = [ "nix-daemon.socket" "nix-daemon.service" "shutdown.target" ];
        conflicts = [ "shutdown.target" ];
        unitConfig = {
          DefaultDependencies = false;
          ConditionPathExists = registration;
        };
        path = [ config.nix.package pkgs.diffutils pkgs.coreutils ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = ''
          stamp=/nix/var/nix/factory-path-registration
          if cmp -s ${registration} "$stamp"; then
            echo "factory store paths already registered"
            exit 0
          fi
          nix-store --load-db < ${registration}
          # paths of an older factory image that this one lacks: drop them from the database
          nix-store --verify || echo "nix-store --verify reported problems (see above)"
          cp ${registration} "$stamp.tmp"
          mv "$stamp.tmp" "$stamp"
          echo "registered the factory image's store paths"
        '';
      };
    })

    # nix-store --optimise hard-links identical files: on a plain overlay that copies every
    # factory file it touches up to /persist. Optimise new paths as they arrive instead.
    (mkIf (cfg.storeMode == "overlay" && !cfg.localOverlayStore) {
      nix.optimise.automatic = lib.mkOverride 900 false;
      nix.settings.auto-optimise-store = lib.mkDefault true;
    })
  ]);
}
