# Stage 2 of a factory VM: keep its own NixOS configuration in /persist/nixos and follow it.
#
#   services.sync-config.enable = true;
#
# - sync-config.service (+ timer: 10 min after boot, then hourly, up to 10 min late): reads
#   `repo` and `branch` from /persist/config.json (vm.repo= / vm.branch=, merged by factory-init)
#   and clones the repository into /persist/nixos, or `git pull --ff-only`s it. The first
#   connection to an SSH host records its key (StrictHostKeyChecking=accept-new, known_hosts on
#   /persist); a later mismatch makes the pull fail.
# - vm-cutover: switches a VM from the factory system to its own configuration,
#   /persist/nixos#<hostname> (hostname from /persist/config.json), after a sync-config run.
# - system.autoUpgrade from that flake nightly (rebooting when the kernel or initrd changed),
#   at most 5 boot entries, weekly garbage collection of generations older than 14 days, store
#   optimisation, and sops-nix's age key on /persist when sops-nix is imported.
# Everything but the service, the timer and vm-cutover is a default (mkDefault): override freely.
{ config, lib, pkgs, options, ... }:

let
  inherit (lib) mkOption mkIf mkDefault types;
  cfg = config.services.sync-config;
  hostName = config.networking.hostName;

  # nixos-rebuild picks nixosConfigurations.<current host name> when the flake has no #attr:
  # right on the factory system too, whose host name comes from vm.hostname at run time.
  flake = if hostName == "" then cfg.directory else "${cfg.directory}#${hostName}";

  sshCommand = lib.concatStringsSep " " [
    "ssh"
    "-o StrictHostKeyChecking=accept-new"
    "-o UserKnownHostsFile=${cfg.knownHostsFile}"
    "-o BatchMode=yes"
  ];

  vm-cutover = pkgs.writeShellApplication {
    name = "vm-cutover";
    runtimeInputs = [ pkgs.jq pkgs.coreutils config.systemd.package config.system.build.nixos-rebuild ];
    text = ''
      # Switches this VM from the factory system to its own configuration:
      # /persist/nixos#<hostname>, after pulling it (sync-config). Extra arguments go to
      # nixos-rebuild (e.g. --show-trace).
      config=${lib.escapeShellArg cfg.configFile}
      if [ "$(id -u)" != 0 ]; then
        echo "vm-cutover: run me as root" >&2
        exit 1
      fi
      hostname=$(jq -r '.hostname // empty' "$config" 2>/dev/null || true)
      if [ -z "$hostname" ]; then
        echo "vm-cutover: no hostname in $config (boot with vm.hostname=NAME or a vm.hostname credential)" >&2
        exit 1
      fi
      echo "vm-cutover: pulling the configuration (sync-config.service)"
      systemctl start sync-config.service
      if [ ! -e ${lib.escapeShellArg cfg.directory}/flake.nix ]; then
        echo "vm-cutover: no flake.nix in ${cfg.directory} (is vm.repo= set?)" >&2
        exit 1
      fi
      echo "vm-cutover: nixos-rebuild switch --flake ${cfg.directory}#$hostname"
      exec nixos-rebuild switch --flake ${lib.escapeShellArg cfg.directory}"#$hostname" "$@"
    '';
  };
in
{
  options.services.sync-config = {
    enable = lib.mkEnableOption ''
      pulling this VM's NixOS configuration (vm.repo, vm.branch) into /persist/nixos, the
      vm-cutover command and nightly upgrades from that flake
    '';

    configFile = mkOption {
      type = types.str;
      default = "/persist/config.json";
      description = "The merged vm.* config factory-init writes (keys without \"vm.\").";
    };

    directory = mkOption {
      type = types.str;
      default = "/persist/nixos";
      description = "Where the configuration repository is cloned; the flake used by vm-cutover and system.autoUpgrade.";
    };

    knownHostsFile = mkOption {
      type = types.str;
      default = "/persist/ssh/known_hosts";
      description = "SSH known_hosts for the repository's host: its key is recorded on first use, then enforced.";
    };

    identityFile = mkOption {
      type = types.str;
      default = "/persist/keys/deploy_key";
      description = "SSH private key used for the repository when the file exists (a read-only deploy key).";
    };

    defaultBranch = mkOption {
      type = types.str;
      default = "main";
      description = "The branch when /persist/config.json names none.";
    };
  };

  config = mkIf cfg.enable (lib.mkMerge [
    {
      systemd.services.sync-config = {
        description = "Pull this VM's NixOS configuration into ${cfg.directory}";
        after = [ "network-online.target" ];
        wants = [ "network-online.target" ];
        unitConfig.ConditionPathExists = cfg.configFile;
        unitConfig.RequiresMountsFor = [ cfg.directory ];
        path = [ pkgs.git pkgs.openssh pkgs.jq pkgs.coreutils ];
        environment.HOME = "/root";
        serviceConfig = {
          Type = "oneshot";
          UMask = "0077";
        };
        script = ''
          config=${lib.escapeShellArg cfg.configFile}
          dir=${lib.escapeShellArg cfg.directory}
          repo=$(jq -r '.repo // empty' "$config")
          branch=$(jq -r '.branch // empty' "$config")
          branch=''${branch:-${lib.escapeShellArg cfg.defaultBranch}}
          if [ -z "$repo" ]; then
            echo "no repo in $config (vm.repo=): nothing to pull"
            exit 0
          fi

          known_hosts=${lib.escapeShellArg cfg.knownHostsFile}
          mkdir -p "$(dirname "$known_hosts")"
          ssh_command=${lib.escapeShellArg sshCommand}
          key=${lib.escapeShellArg cfg.identityFile}
          if [ -e "$key" ]; then
            ssh_command="$ssh_command -o IdentitiesOnly=yes -i $key"
          fi
          export GIT_SSH_COMMAND="$ssh_command"

          if [ -e "$dir" ] && [ ! -d "$dir/.git" ]; then
            echo "$dir exists but is not a git checkout: move it away" >&2
            exit 1
          elif [ ! -e "$dir" ]; then
            echo "cloning $repo ($branch) into $dir"
            rm -rf "$dir.tmp"
            git clone --branch "$branch" -- "$repo" "$dir.tmp"
            mv "$dir.tmp" "$dir"
          else
            if [ "$(git -C "$dir" remote get-url origin)" != "$repo" ]; then
              echo "repository changed to $repo"
              git -C "$dir" remote set-url origin "$repo"
            fi
            git -C "$dir" fetch origin
            if [ "$(git -C "$dir" rev-parse --abbrev-ref HEAD)" != "$branch" ]; then
              echo "switching to branch $branch"
              git -C "$dir" switch "$branch"
            fi
            git -C "$dir" pull --ff-only origin "$branch"
          fi
          echo "$dir is at $(git -C "$dir" rev-parse --short HEAD) ($branch)"
        '';
      };

      systemd.timers.sync-config = {
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnBootSec = "10m";
          OnUnitActiveSec = "1h";
          RandomizedDelaySec = "10m";
        };
      };

      environment.systemPackages = [ vm-cutover ];

      # The configuration is a flake.
      nix.settings.experimental-features = [ "nix-command" "flakes" ];

      system.autoUpgrade = {
        enable = mkDefault true;
        flake = mkDefault flake;
        dates = mkDefault "03:40";
        randomizedDelaySec = mkDefault "45min";
        allowReboot = mkDefault true;
        # never leave the checkout modified: sync-config only fast-forwards it
        flags = [ "--no-write-lock-file" "-L" ];
      };
      # Nothing to upgrade from until the first pull.
      systemd.services.nixos-upgrade = mkIf config.system.autoUpgrade.enable {
        unitConfig.ConditionPathExists = "${cfg.directory}/flake.nix";
        after = [ "sync-config.service" ];
      };

      boot.loader.grub.configurationLimit = mkDefault 5;
      boot.loader.systemd-boot.configurationLimit = mkDefault 5;

      nix.gc = {
        automatic = mkDefault true;
        dates = mkDefault "weekly";
        options = mkDefault "--delete-older-than 14d";
      };
      # (factory-init.nix turns this off on a plain overlay /nix, where it would copy the
      # factory store up to /persist.)
      nix.optimise.automatic = mkDefault true;
    }

    # sops-nix, when the configuration imports it: the host's age key lives on /persist.
    (lib.optionalAttrs (options ? sops) {
      sops.age.keyFile = mkDefault "/persist/keys/host.agekey";
    })
  ]);
}
