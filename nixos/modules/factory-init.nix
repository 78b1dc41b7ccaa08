# factory-init in a NixOS initrd (helper mode), plus what stage 2 needs for the /nix layout.
#
#   boot.initrd.factoryInit.enable = true;
#
# NixOS's stage 1 mounts the root as usual; factory-init then runs `--root=/sysroot` (systemd
# stage 1, the default from NixOS 26.05 and the tested case: factory-init.service, rendered from
# nixos/factory-init.service.in) or `--root=/mnt-root` (scripted stage 1, from postMountCommands,
# while NixOS still has it) and does only its /persist, /nix and config part. The options below
# become the initrd's /etc/vm-config.json (factory-init's embedded config, the lowest layer): vm.*
# on the kernel command line still overrides every one of them at boot.
#
# /nix/.ro-store: factory-init's overlay and bind modes put the factory /nix there. NixOS's
# qemu-vm.nix (nixos-rebuild build-vm, NixOS tests) uses the same name for the store it overlays
# /nix/store with (the host's store over 9p, or the store image; upper layer in /nix/.rw-store).
# With both, whichever mounts last hides the other: factory-init's overlay on /nix hides qemu-vm's
# /nix/store overlay and its lower store (the system's own paths), or qemu-vm's mounts land on top
# of factory-init's and the VM runs from the host's store with writes going to a tmpfs, while
# Nix's local-overlay-store and the registration service read the wrong /nix/.ro-store. The
# assertions below refuse that; such a VM needs storeMode = "off" (or no writable qemu-vm store).
{ config, options, lib, pkgs, ... }:

let
  inherit (lib) mkOption mkIf mkMerge types literalExpression;

  cfg = config.boot.initrd.factoryInit;
  systemdStage1 = config.boot.initrd.systemd.enable;

  # The scripted stage 1 (stage-1.nix) is deprecated in 26.05 and goes in 26.11; once its options
  # are gone, defining them is an error even under mkIf, so that block is left out entirely.
  scriptedOptions = [ "postMountCommands" "extraUtilsCommands" "extraUtilsCommandsTest" "extraFiles" ];
  haveScripted = lib.all (o: options.boot.initrd ? ${o}) scriptedOptions;

  # "systemd-cryptsetup": NixOS opens the data disk (boot.initrd.luks.devices.<mapperName>) and
  # factory-init takes /dev/mapper/<mapperName> as it is. factory-init's own mapping has the same
  # name (src/unlock.h, PERSIST_DM_NAME).
  splitUnlock = cfg.unlockWith == "systemd-cryptsetup";
  mapperName = "persist";
  opened = "/dev/mapper/${mapperName}";
  cryptsetupUnit = "systemd-cryptsetup@${mapperName}.service";

  methods = [ "tpm2" "credential" "key" "keyfile" "passphrase" ];

  # Where the key file lands in the initrd (factory-init's default vm.luks.keyfile).
  keyFileInInitrd = "/etc/factory-init/keyfile";

  # Keys factory-init reads for itself; set them through the options, not embeddedConfig.
  controlKeys = [
    "persist" "persist.timeout" "persist.options" "persist.encrypted" "persist.opened" "store" "luks"
    "luks.keyfile" "luks.tries" "luks.timeout" "luks.tpm2.timeout"
    "persist.provision" "persist.provision.pcrs"
  ];

  stripVm = name: lib.removePrefix "vm." name;
  embedded = lib.mapAttrs' (n: v: lib.nameValuePair (stripVm n) v) cfg.embeddedConfig;

  # factory-init always puts compress=zstd first; repeating it adds nothing.
  extraMountOptions = lib.filter (o: o != "compress=zstd") cfg.mountOptions;

  control = lib.filterAttrs (_: v: v != null) ({
    "persist.timeout" = toString cfg.timeout;
    "persist.options" =
      if extraMountOptions == [ ] then null else lib.concatStringsSep "," extraMountOptions;
    store = cfg.storeMode;
  } // (if splitUnlock then {
    # the volume systemd-cryptsetup opened; factory-init unlocks nothing itself
    "persist.opened" = opened;
  } else {
    persist = cfg.device;
    "persist.encrypted" = cfg.encrypted;
    luks = lib.concatStringsSep "," cfg.luks.methods;
    "luks.keyfile" = if cfg.luks.keyFile == null then null else keyFileInInitrd;
    "luks.tries" = lib.mapNullable toString cfg.luks.tries;
    "luks.timeout" = lib.mapNullable toString cfg.luks.timeout;
    "luks.tpm2.timeout" = lib.mapNullable toString cfg.luks.tpm2Timeout;
    "persist.provision" = if cfg.provision.enable then "1" else null;
    "persist.provision.pcrs" = if cfg.provision.enable then cfg.provision.pcrs else null;
  }));

  # provisioning runs mkfs.btrfs in stage 1 (factory-init looks in /sbin, /bin, /usr/sbin, /usr/bin)
  mkfsBtrfs = "${pkgs.btrfs-progs}/bin/mkfs.btrfs";

  configFile = pkgs.writeText "vm-config.json" (builtins.toJSON (embedded // control));

  nixVersion = lib.getVersion config.nix.package;
  storeModes = cfg.package.passthru.storeModes or [ "overlay" "off" ];
  # null: a package that does not say (no warning then)
  configKeys = cfg.package.passthru.configKeys or null;

  # ---- the unit: nixos/factory-init.service.in, rendered --------------------------------------
  # The same text any other initrd gets from nixos/render-unit with these values; what differs by
  # configuration goes into a drop-in (below), never into this text.
  unitSubstitutions = {
    factoryInit = "/bin/factory-init"; # boot.initrd.systemd.extraBin
    configFile = "/etc/vm-config.json"; # boot.initrd.systemd.contents
  };
  unitTemplate = builtins.readFile ../factory-init.service.in;
  unitRendered = lib.replaceStrings
    (map (n: "@${n}@") (lib.attrNames unitSubstitutions)) (lib.attrValues unitSubstitutions)
    unitTemplate;
  unitLeftover = lib.filter lib.isList (builtins.split "@([A-Za-z_][A-Za-z0-9_]*)@" unitRendered);
  unitText =
    if unitLeftover == [ ] then unitRendered
    else throw "factory-init.service.in: no value for @${lib.concatStringsSep "@, @" (lib.flatten unitLeftover)}@";

  # The drop-in factory-init.service.d/50-nixos.conf. Ordering on a unit that does not exist is
  # a no-op, and a Wants= on it too, so these hold on NixOS releases without those units.
  dropInLines =
    # boot.initrd.secrets is copied into place by this oneshot (24.05 and later, where it exists
    # only while there are secrets): the key file is there only after it.
    lib.optionals (cfg.luks.keyFile != null && !splitUnlock) [
      "Wants=initrd-nixos-copy-secrets.service"
      "After=initrd-nixos-copy-secrets.service"
    ]
    # Wants, not Requires: a failed unlock leaves factory-init to report no /persist.
    ++ lib.optionals splitUnlock [
      "Wants=${cryptsetupUnit}"
      "After=${cryptsetupUnit}"
    ];
  dropInText = lib.concatLines ([ "[Unit]" ] ++ dropInLines);
  dropIn = pkgs.writeTextFile {
    name = "factory-init-service-dropin";
    destination = "/lib/systemd/system/factory-init.service.d/50-nixos.conf";
    text = dropInText;
  };

  # ---- kernel modules --------------------------------------------------------------------------
  # What factory-init loads itself (libkmod), in helper mode too; `factory-init --plan --cmdline ""`
  # ("modules") is the source of truth for planModules (nixos/tests/eval.sh compares them).
  planModules = [
    "virtio_pci" "virtio_blk" "qemu_fw_cfg" "tpm_tis" "tpm_crb" "ext4" "af_alg"
    "algif_skcipher" "dm_crypt" "xts" "btrfs" "overlay" "sha256_ssse3"
  ];
  # NixOS's initrd build (makeModulesClosure, allowMissing unless boot.initrd.allowMissingModules)
  # fails on a name the kernel has neither as a module nor built in; a built-in one is fine
  # (modprobe --show-depends says "builtin"). So only names that vanish altogether depend on the
  # kernel, cut off at the first version that may lack them: leaving out an acceleration module a
  # kernel still has only costs speed, asking for one it lacks breaks the build.
  #  - sha256_ssse3: x86's SHA-256 glue was folded into the sha256 library (6.16/6.17; absent on
  #    7.x). Asked for up to the 6.12 LTS only; 6.13-6.15 then hash with the generic code.
  #  - xts: built in on 7.2, a module before; dm-crypt needs it wherever it is a module: kept.
  #  - crc32c/libcrc32c (gone on 7.2): not listed; btrfs's dependencies come from modprobe.
  kernelVersion = config.boot.kernelPackages.kernel.version;
  modulesUpTo = { sha256_ssse3 = "6.13"; }; # absent from this version on
  kernelModules = lib.filter
    (m: !(modulesUpTo ? ${m}) || lib.versionOlder kernelVersion modulesUpTo.${m})
    planModules;

  # ---- who opens the data disk -----------------------------------------------------------------
  # LABEL=x and /dev/disk/by-label/x name the same disk (likewise UUID, PARTUUID, PARTLABEL).
  byTag = { LABEL = "by-label"; UUID = "by-uuid"; PARTUUID = "by-partuuid"; PARTLABEL = "by-partlabel"; };
  normDevice = d:
    let m = builtins.match "(LABEL|UUID|PARTUUID|PARTLABEL)=(.+)" d; in
    if m == null then d else "/dev/disk/${byTag.${lib.elemAt m 0}}/${lib.elemAt m 1}";
  luksDevices = config.boot.initrd.luks.devices;
  # with "factory-init": volumes NixOS would open too (the same disk, or the same mapping name)
  fighting = lib.attrNames (lib.filterAttrs
    (n: v: n == mapperName || (cfg.device != "auto" && normDevice v.device == normDevice cfg.device))
    luksDevices);
  # what device = "auto" may pick, when NixOS opens one of those too
  autoCandidates = [ "/dev/disk/by-label/persist" "/dev/vdb" ];
  fightingAuto = lib.attrNames (lib.filterAttrs
    (n: v: cfg.device == "auto" && lib.elem (normDevice v.device) autoCandidates) luksDevices);

  # crypttab options for the "systemd-cryptsetup" split, from the luks.* options
  crypttabOpts =
    lib.optional (lib.elem "tpm2" cfg.luks.methods) "tpm2-device=auto"
    ++ lib.optional (!(lib.elem "passphrase" cfg.luks.methods)) "headless=true"
    ++ [ "x-systemd.device-timeout=${toString cfg.timeout}s" ]
    ++ lib.optional (cfg.luks.tries != null) "tries=${toString cfg.luks.tries}"
    ++ lib.optional (cfg.luks.timeout != null) "timeout=${toString cfg.luks.timeout}s"
    ++ lib.optional (cfg.luks.tpm2Timeout != null) "token-timeout=${toString cfg.luks.tpm2Timeout}s";

  # ---- NixOS's own /nix/.ro-store ----------------------------------------------------------------
  # qemu-vm.nix's writable store (24.05: virtualisation.writableStore; later releases declare it as
  # fileSystems."/nix/store".overlay with lower /nix/.ro-store); netboot's squashfs store likewise.
  qemuWritableStore = (options ? virtualisation) && (options.virtualisation ? writableStore)
    && config.virtualisation.writableStore;
  lowerdirs = fs: let l = fs.overlay.lowerdir or null; in if l == null then [ ] else map toString l;
  roStoreUsers = lib.attrNames (lib.filterAttrs
    (_: fs: fs.mountPoint == "/nix/.ro-store" || lib.elem "/nix/.ro-store" (lowerdirs fs))
    config.fileSystems);
  # other file systems mounted below /nix, which an overlay or bind on /nix hides or lands under
  belowNix = lib.attrNames (lib.filterAttrs
    (_: fs: lib.hasPrefix "/nix/" fs.mountPoint && !(lib.elem fs.mountPoint [ "/nix/.ro-store" ]))
    config.fileSystems);
  storeOnNix = cfg.storeMode != "off";

  # Nix's local-overlay-store (experimental, Nix >= 2.22): the factory store below, read-only,
  # with its own database; /persist/nix/upper/store above (the overlay covers /nix, not
  # /nix/store, hence check-mount=false). The lower store URL is percent-encoded inside ours.
  lowerStore = "local%3Freal%3D/nix/.ro-store/store%26state%3D/nix/.ro-store/var/nix%26read-only%3Dtrue";
  overlayStoreUrl = "local-overlay://?lower-store=${lowerStore}"
    + "&upper-layer=/persist/nix/upper/store&check-mount=false";

  registration = "/nix/.ro-store/nix-path-registration";
  # The registration service's first step: the overlay store reads the new paths from the lower
  # store's database itself.
  loadDb = if cfg.localOverlayStore
    then "# local-overlay-store: the lower store's database knows the new image's paths"
    else "nix-store --load-db < ${registration}";
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
        not). `off`: /nix stays the factory's. `overlay` and `bind` clash with NixOS's qemu-vm
        writable store (`virtualisation.writableStore`), which also uses /nix/.ro-store: an
        assertion refuses the combination; use `off` in such VMs.
      '';
    };

    unlockWith = mkOption {
      type = types.enum [ "factory-init" "systemd-cryptsetup" ];
      default = "factory-init";
      description = ''
        Who opens the data disk. `factory-init`: factory-init finds and unlocks it itself
        (`device`, `encrypted`, `luks.*`); NixOS must not open the same volume
        (`boot.initrd.luks.devices` may not name it: an assertion says when it does).
        `systemd-cryptsetup` (systemd stage 1 only, and a concrete `device`, not `auto`): this
        module adds it as `boot.initrd.luks.devices.${mapperName}` (crypttab options from the
        `luks.*` options: `tpm2-device=auto` when `tpm2` is among the methods, the key file for
        `keyfile`, `headless=true` without `passphrase`, `tries=`, `timeout=`, `token-timeout=`,
        and `x-systemd.device-timeout=` from `timeout`; the `credential` and `key` methods have no
        systemd-cryptsetup counterpart), factory-init.service is ordered after
        ${cryptsetupUnit}, and the embedded config says `persist.opened = "${opened}"`
        instead of `persist`, `persist.encrypted` and `luks*`: factory-init mounts that opened
        volume and unlocks nothing itself (a warning says when the package does not know the key yet).
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
          copied to the Nix store) at ${keyFileInInitrd}, for the `keyfile` method. With systemd
          stage 1, factory-init.service is then ordered after initrd-nixos-copy-secrets.service,
          which puts it there (a drop-in). Anyone who can read the initrd can read it.
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

    provision = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Zero-touch provisioning (`vm.persist.provision`): when no data disk can be unlocked or
          mounted because none is LUKS or Btrfs, factory-init makes the one blank disk (the one
          `device` names, or under `auto` the one virtio disk besides the root's) a LUKS2 volume
          with a systemd-tpm2 token and a slot for the `vm.luks.key` credential, Btrfs inside and
          a new age identity in keys/host.agekey. A disk is blank only when libblkid finds no
          signature and its first and last MiB and 256 sampled blocks are zeros; any other disk
          is never written to. Adds mkfs.btrfs to the initrd. Not with
          `unlockWith = "systemd-cryptsetup"`. A VM manager can override this per VM with the
          system credential `vm.persist.provision` (SMBIOS `io.systemd.credential:vm.persist.provision=0`,
          or `=1`, which provisions only where the initrd has mkfs.btrfs, i.e. with this on);
          `vm.persist.provision` on the kernel command line outranks both.
        '';
      };
      pcrs = mkOption {
        type = types.str;
        default = "7+15:sha256=0000000000000000000000000000000000000000000000000000000000000000";
        example = "7";
        description = ''
          The PCRs the new disk's TPM2 token is sealed to (`vm.persist.provision.pcrs=`, as
          `factory-init enroll-tpm2 --pcrs` takes them). The default binds PCR 7 as it is at
          provisioning and PCR 15 at its boot value, which factory-init extends before stage 2:
          stage 2 can never unseal the key. systemd 258's cryptenroll binds to no PCR by default,
          which leaves the key to anything booted with this TPM.
        '';
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

    metrics.textfileCollector = mkOption {
      type = types.bool;
      default = config.services.prometheus.exporters.node.enable;
      defaultText = literalExpression "config.services.prometheus.exporters.node.enable";
      description = ''
        Point node-exporter's textfile collector at /run/factory-init/metrics, where stage 1
        writes the boot's outcome as Prometheus metrics (factory-init.prom: persist or fallback
        with a reason code, unlock method, store mode, step durations in seconds, factory image,
        refresh, bind copy figures). This sets the collector's directory: turn it off when
        another textfile directory is in use, and link or copy the file there instead.
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
        upper layer), so Nix knows which paths belong to the factory image. Turns on the
        experimental features local-overlay-store and read-only-local-store (the lower store is
        opened read-only). Needs Nix 2.22 or later; Nix commands must then run as root (the
        store setting applies to everyone).
      '';
    };

    registerFactoryPaths = mkOption {
      type = types.bool;
      default = cfg.storeMode != "off";
      defaultText = literalExpression ''storeMode != "off"'';
      description = ''
        At boot, when the factory image's store path registration (${registration},
        written by nixos/images.nix) changed: load it into the Nix database on /persist, so that
        the paths a newer factory image brings are valid, and forget the paths an older image
        had and this one lacks (`nix-store --verify`). With `localOverlayStore` only the second
        step runs (the lower store's own database knows the new paths): the upper database
        holds copies of the old image's records, and without it Nix would take the paths the
        new image lacks for valid although their files are gone.
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
          assertion = !(cfg.provision.enable && splitUnlock);
          message = ''
            boot.initrd.factoryInit.provision.enable needs factory-init to open the data disk:
            with unlockWith = "systemd-cryptsetup" the disk is opened before factory-init runs.
          '';
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
        {
          assertion = systemdStage1 || haveScripted;
          message = ''
            boot.initrd.factoryInit needs systemd stage 1 here: this NixOS has no scripted stage 1
            any more (boot.initrd.${lib.concatStringsSep ", boot.initrd." (lib.filter (o: !(options.boot.initrd ? ${o})) scriptedOptions)}
            do not exist). Set boot.initrd.systemd.enable = true.
          '';
        }
        {
          assertion = splitUnlock -> systemdStage1;
          message = ''
            boot.initrd.factoryInit.unlockWith = "systemd-cryptsetup" needs systemd stage 1
            (boot.initrd.systemd.enable = true); the scripted stage 1 only has factory-init's own unlock.
          '';
        }
        {
          assertion = splitUnlock -> cfg.device != "auto";
          message = ''
            boot.initrd.factoryInit.unlockWith = "systemd-cryptsetup" needs a concrete
            boot.initrd.factoryInit.device (a /dev path, LABEL=, UUID=, PARTUUID= or PARTLABEL=), not
            "auto": systemd-cryptsetup opens the one volume crypttab names.
          '';
        }
        {
          assertion = splitUnlock || fighting == [ ];
          message = ''
            boot.initrd.luks.devices.${lib.concatStringsSep ", boot.initrd.luks.devices." fighting} would
            have NixOS open the volume (or the mapping "${mapperName}") that factory-init unlocks itself
            (boot.initrd.factoryInit.device = "${cfg.device}"): the two would fight over it. Drop that
            entry, or set boot.initrd.factoryInit.unlockWith = "systemd-cryptsetup" to let
            systemd-cryptsetup open it and factory-init take /dev/mapper/${mapperName}.
          '';
        }
        {
          assertion = !(storeOnNix && (qemuWritableStore || roStoreUsers != [ ]));
          message = ''
            boot.initrd.factoryInit.storeMode = "${cfg.storeMode}" puts the factory /nix at
            /nix/.ro-store, which ${lib.concatStringsSep " and " (lib.optional qemuWritableStore "qemu-vm's writable store (virtualisation.writableStore)" ++ map (n: "fileSystems.\"${n}\"") roStoreUsers)}
            use as well: whichever mounts last hides the other (the VM would run from the wrong
            store, or lose its own). For such a VM set boot.initrd.factoryInit.storeMode = "off",
            or virtualisation.writableStore = false.
          '';
        }
      ];

      warnings = lib.optional (!(lib.elem cfg.storeMode storeModes)) ''
        boot.initrd.factoryInit.storeMode = "${cfg.storeMode}" is not implemented by this
        factory-init (it knows ${lib.concatStringsSep ", " storeModes}); it will use the overlay.
      ''
      ++ lib.optional (splitUnlock && configKeys != null && !(lib.elem "persist.opened" configKeys)) ''
        boot.initrd.factoryInit.unlockWith = "systemd-cryptsetup": this factory-init does not know
        the config key persist.opened yet; it will ignore it and look for the data disk itself
        (device "auto"), next to the volume systemd-cryptsetup opened.
      ''
      ++ lib.optional (cfg.provision.enable && configKeys != null && !(lib.elem "persist.provision" configKeys)) ''
        boot.initrd.factoryInit.provision.enable: this factory-init does not know the config key
        persist.provision yet; it will never provision a disk.
      ''
      ++ lib.optional (!splitUnlock && fightingAuto != [ ]) ''
        boot.initrd.luks.devices.${lib.concatStringsSep ", boot.initrd.luks.devices." fightingAuto} names a
        volume that boot.initrd.factoryInit.device = "auto" may pick too (a LUKS volume labelled
        persist, else /dev/vdb): NixOS and factory-init would both try to open it. Give
        factory-init a concrete device, or use unlockWith = "systemd-cryptsetup".
      ''
      ++ lib.optional (storeOnNix && belowNix != [ ]) ''
        boot.initrd.factoryInit.storeMode = "${cfg.storeMode}" mounts over /nix, and
        ${lib.concatMapStringsSep ", " (n: "fileSystems.\"${n}\"") belowNix} below it: mounted
        before factory-init they end up hidden, after it on top of its /nix.
      '';

      boot.initrd.availableKernelModules = kernelModules;

      boot.initrd.secrets = mkIf (cfg.luks.keyFile != null) {
        ${keyFileInInitrd} = cfg.luks.keyFile;
      };
    }

    # ---- scripted stage 1 (left out where NixOS no longer has it) -----------------------
    (lib.optionalAttrs haveScripted (mkIf (!systemdStage1) {
      # Static, so it survives extra-utils' strip, nuke-refs and patchelf untouched.
      boot.initrd.extraUtilsCommands = ''
        copy_bin_and_libs ${cfg.package}/bin/factory-init
      '' + lib.optionalString cfg.provision.enable ''
        copy_bin_and_libs ${mkfsBtrfs}
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
    }))

    # ---- systemd stage 1 -----------------------------------------------------------------
    (mkIf systemdStage1 {
      boot.initrd.systemd.extraBin = {
        factory-init = "${cfg.package}/bin/factory-init";
      } // lib.optionalAttrs cfg.provision.enable { "mkfs.btrfs" = mkfsBtrfs; };
      boot.initrd.systemd.contents."/etc/vm-config.json".source = configFile;
      # Exactly the rendered nixos/factory-init.service.in; NixOS reads no [Install] section,
      # hence wantedBy here.
      boot.initrd.systemd.units."factory-init.service" = {
        text = unitText;
        wantedBy = [ "initrd-fs.target" ];
      };
      # what this configuration adds, as factory-init.service.d/50-nixos.conf
      boot.initrd.systemd.packages = lib.optional (dropInLines != [ ]) dropIn;
    })

    (mkIf splitUnlock {
      boot.initrd.luks.devices.${mapperName} = {
        device = cfg.device;
        keyFile = if cfg.luks.keyFile != null && lib.elem "keyfile" cfg.luks.methods then keyFileInInitrd else null;
        crypttabExtraOpts = crypttabOpts;
      };
    })

    # ---- stage 2: Nix on the new /nix ----------------------------------------------------
    (mkIf cfg.localOverlayStore {
      nix.settings = {
        # the lower store is opened with read-only=true, itself experimental (Nix 2.19-2.34)
        experimental-features = [ "local-overlay-store" "read-only-local-store" ];
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
          ${loadDb}
          # paths of an older factory image that this one lacks: drop them from the database
          nix-store --verify || echo "nix-store --verify reported problems (see above)"
          cp ${registration} "$stamp.tmp"
          mv "$stamp.tmp" "$stamp"
          echo "registered the factory image's store paths"
        '';
      };
    })

    {
      # The conditions sit on the leaves: exporters is one submodule option, so a condition on
      # the whole definition would need node.enable to decide node.enable.
      services.prometheus.exporters.node = {
        enabledCollectors = mkIf cfg.metrics.textfileCollector [ "textfile" ];
        extraFlags = mkIf cfg.metrics.textfileCollector
          [ "--collector.textfile.directory=/run/factory-init/metrics" ];
      };
    }

    # nix-store --optimise hard-links identical files: on a plain overlay that copies every
    # factory file it touches up to /persist. Optimise new paths as they arrive instead.
    (mkIf (cfg.storeMode == "overlay" && !cfg.localOverlayStore) {
      nix.optimise.automatic = lib.mkOverride 900 false;
      nix.settings.auto-optimise-store = lib.mkDefault true;
    })
  ]);
}
