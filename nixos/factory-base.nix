# The factory system: one small NixOS image that boots the whole fleet. Each VM's state lives on
# its data disk (/persist, set up by factory-init in the initrd); its identity (vm.hostname,
# vm.repo, vm.branch) comes from the kernel command line, system credentials or the config saved
# on /persist. Use with nixos/images.nix for a disk image (see flake.nix).
{ config, lib, pkgs, modulesPath, ... }:

let
  inherit (lib) mkDefault;
in
{
  imports = [
    (modulesPath + "/profiles/qemu-guest.nix")
    ./modules/factory-init.nix
    ./modules/sync-config.nix
  ];

  # systemd stage 1, as NixOS 26.05 and later have by default (24.05: the scripted one); the
  # factory-init unit comes from nixos/factory-init.service.in.
  boot.initrd.systemd.enable = mkDefault true;

  boot.initrd.factoryInit = {
    enable = true;
    # The image's defaults for stage 2 (the lowest config layer; vm.branch= etc. override).
    embeddedConfig = {
      branch = mkDefault "main";
    };
  };

  services.sync-config.enable = mkDefault true;

  # Serial console first (the VMs run headless), the VGA console too.
  boot.kernelParams = [ "console=tty0" "console=ttyS0,115200" ];
  boot.loader.timeout = mkDefault 1;

  # No host name in the image: vm.hostname sets it at boot (below), and after vm-cutover the
  # VM's own configuration names it.
  networking.hostName = mkDefault "";
  system.name = mkDefault "factory";
  # systemd-networkd: factory-init writes /run/systemd/network/10-factory-init-static.network
  # from vm.network_static= (sorting first, so it takes its interface); every other Ethernet
  # interface, and every one without vm.network_static, gets DHCP from the file below.
  networking.useNetworkd = mkDefault true;
  networking.useDHCP = mkDefault false;
  systemd.network.networks."99-factory-dhcp" = {
    matchConfig = { Type = "ether"; Kind = "!*"; };
    networkConfig.DHCP = "yes";
  };

  systemd.services.vm-hostname = lib.mkIf (config.networking.hostName == "") {
    description = "Set the host name from vm.hostname";
    wantedBy = [ "sysinit.target" ];
    before = [ "sysinit.target" "network-pre.target" "shutdown.target" ];
    after = [ "local-fs.target" ];
    conflicts = [ "shutdown.target" ];
    unitConfig = {
      DefaultDependencies = false;
      ConditionPathExists = "/run/vm-config.json";
    };
    path = [ pkgs.jq ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
    };
    # factory-init has checked it is a valid RFC 1123 host name.
    script = ''
      name=$(jq -r '.hostname // empty' /run/vm-config.json)
      if [ -n "$name" ]; then
        echo -n "$name" > /proc/sys/kernel/hostname
        echo "host name: $name"
      fi
    '';
  };

  services.openssh = {
    enable = mkDefault true;
    settings.PasswordAuthentication = mkDefault false;
    # on the data disk, so a VM keeps its host key across factory images
    hostKeys = mkDefault [ { path = "/persist/ssh/ssh_host_ed25519_key"; type = "ed25519"; } ];
  };

  documentation.enable = mkDefault false;
  documentation.nixos.enable = mkDefault false;

  system.stateVersion = mkDefault "24.05";
}
