/* dali's initramfs /init: load the modules the root disk needs, mount root, switch to it.
 *
 * Built static by dali/kernel_boot.py (gcc -static -Os), put at /init in an initramfs that also
 * holds the .ko files and /dali/modules (their paths, one a line, dependencies first).
 * It exists so a node can boot a kernel that is not the image's, whatever that kernel builds in
 * or as modules, without running anything of the image before root is mounted.
 *
 * Kernel command line it reads (everything else is left to the real init):
 *   root=/dev/XXX       the root block device (a path: no LABEL=/UUID=, dali always gives /dev/vda)
 *   rootfstype=TYPE     default ext4
 *   rootflags=OPTS      mount data, default none
 *   ro / rw             default rw
 *   rootdelay=SECONDS   how long to wait for the root device, default 30
 *   init=PATH           default /sbin/init
 *   dali.modules=SERIAL the virtio disk whose serial is SERIAL (<serial> in the domain XML) is
 *                       a read-only ext4 holding <release>/ as `make modules_install` writes it:
 *                       it is mounted on /lib/modules of the new root. Found by serial, not by
 *                       name, so the order in which disks are probed does not matter.
 * Messages go to /dev/kmsg, prefixed "dali-init:", so they land in dmesg and on the console.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static int kmsg = -1;

static void say(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf, "<5>dali-init: ");
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof buf)
		n = sizeof buf - 1;
	if (kmsg >= 0)
		write(kmsg, buf, n);
	else
		write(2, buf + 3, n - 3);
}

static void fail(const char *what)
{
	say("%s: %s; giving up (the kernel will panic)\n", what, strerror(errno));
	sleep(5);
	exit(1);
}

static char cmdline[4096];

/* The value of key= on the command line (the last one wins), or NULL. Writes a copy into out. */
static const char *arg(const char *key, char *out, size_t size)
{
	size_t klen = strlen(key);
	const char *found = NULL, *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\n')
			p++;
		const char *end = p;
		while (*end && *end != ' ' && *end != '\n')
			end++;
		if ((size_t)(end - p) >= klen && strncmp(p, key, klen) == 0) {
			size_t n = end - p - klen;
			if (n >= size)
				n = size - 1;
			memcpy(out, p + klen, n);
			out[n] = 0;
			found = out;
		}
		p = end;
	}
	return found;
}

/* The position of the bare word on the command line (the last one), or -1. */
static int flag(const char *word)
{
	int last = -1, i = 0;
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\n')
			p++;
		const char *end = p;
		while (*end && *end != ' ' && *end != '\n')
			end++;
		if (end > p && (size_t)(end - p) == strlen(word) && strncmp(p, word, end - p) == 0)
			last = i;
		i++;
		p = end;
	}
	return last;
}

static void load_modules(void)
{
	FILE *list = fopen("/dali/modules", "r");
	char path[1024];
	if (!list)
		return;
	while (fgets(path, sizeof path, list)) {
		path[strcspn(path, "\n")] = 0;
		if (!*path)
			continue;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			say("cannot open %s: %s\n", path, strerror(errno));
			continue;
		}
		if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
			say("loading %s: %s\n", path, strerror(errno));
		close(fd);
		unlink(path); /* the initramfs stays in RAM: free what is no longer needed */
	}
	fclose(list);
}

/* /dev/vdX of the virtio disk with this serial, waiting up to seconds for it. */
static void disk_by_serial(const char *serial, char *dev, size_t size, int seconds)
{
	char path[64], value[128];
	for (int i = 0; i < seconds * 10; i++) {
		for (char c = 'a'; c <= 'z'; c++) {
			snprintf(path, sizeof path, "/sys/block/vd%c/serial", c);
			int fd = open(path, O_RDONLY);
			if (fd < 0)
				continue;
			ssize_t n = read(fd, value, sizeof value - 1);
			close(fd);
			if (n < 0)
				continue;
			value[n] = 0;
			value[strcspn(value, "\n")] = 0;
			if (strcmp(value, serial) == 0) {
				snprintf(dev, size, "/dev/vd%c", c);
				return;
			}
		}
		if (i == 10)
			say("waiting up to %d s for the disk with serial %s\n", seconds, serial);
		usleep(100000);
	}
	errno = ENODEV;
	fail(serial);
}

static void wait_for(const char *dev, int seconds)
{
	struct stat st;
	for (int i = 0; i < seconds * 10; i++) {
		if (stat(dev, &st) == 0 && S_ISBLK(st.st_mode))
			return;
		if (i == 10)
			say("waiting up to %d s for %s\n", seconds, dev);
		usleep(100000);
	}
	errno = ENODEV;
	fail(dev);
}

int main(void)
{
	mkdir("/dev", 0755);
	mkdir("/proc", 0755);
	mkdir("/root", 0755);
	mkdir("/sys", 0755);
	if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") != 0 && errno != EBUSY)
		fail("mounting devtmpfs on /dev");
	kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		fail("mounting /proc");
	if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		fail("mounting /sys");
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd < 0 || read(fd, cmdline, sizeof cmdline - 1) < 0)
		fail("reading /proc/cmdline");
	close(fd);

	load_modules();

	char root[256], fstype[64], flags[512], delay[16], init[256], serial[64], mods[32];
	if (!arg("root=", root, sizeof root) || strncmp(root, "/dev/", 5) != 0) {
		errno = EINVAL;
		fail("root= must be a /dev/ path");
	}
	if (!arg("rootfstype=", fstype, sizeof fstype))
		strcpy(fstype, "ext4");
	if (!arg("rootflags=", flags, sizeof flags))
		flags[0] = 0;
	int seconds = arg("rootdelay=", delay, sizeof delay) ? atoi(delay) : 30;
	if (!arg("init=", init, sizeof init))
		strcpy(init, "/sbin/init");
	unsigned long mflags = flag("ro") > flag("rw") ? MS_RDONLY : 0;

	wait_for(root, seconds);
	if (mount(root, "/root", fstype, mflags, flags) != 0)
		fail(root);
	say("mounted %s (%s, %s) on /root\n", root, fstype, mflags ? "ro" : "rw");

	if (arg("dali.modules=", serial, sizeof serial)) {
		disk_by_serial(serial, mods, sizeof mods, seconds);
		wait_for(mods, seconds);
		mkdir("/root/lib/modules", 0755); /* exists in any Debian root; EROFS/EEXIST are fine */
		if (mount(mods, "/root/lib/modules", "ext4", MS_RDONLY | MS_NODEV | MS_NOSUID, NULL) != 0)
			fail(mods);
		say("mounted %s read-only on /lib/modules\n", mods);
	}

	if (mount("/dev", "/root/dev", NULL, MS_MOVE, NULL) != 0)
		umount2("/dev", MNT_DETACH);
	umount2("/proc", MNT_DETACH);
	umount2("/sys", MNT_DETACH);
	unlink("/dali/modules");
	if (chdir("/root") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
		fail("switching to the new root");
	if (kmsg >= 0)
		close(kmsg);
	char *argv[] = {init, NULL};
	execv(init, argv);
	fail(init);
	return 1;
}
